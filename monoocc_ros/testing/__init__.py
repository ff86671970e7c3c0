"""Support for the tests and the benchmarks, kept out of the shipped node and tools: the node-side
harness (camera messages from arrays, a test node that publishes them and collects the node's
outputs, an untrained checkpoint) and the cross-process DDS probe. Nothing in the node, the
trainer or the bag tools imports from here (the node benchmarks, `monoocc bench node|soak|msg`,
do); the node process itself is started by
`monoocc_ros.ros.process`, the one launcher everyone shares.
"""
