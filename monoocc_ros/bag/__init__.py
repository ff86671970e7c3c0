"""rosbag2 tooling (`monoocc bag ...`, `monoocc replay-eval`), built on the `rosbags` library:
datasets to bags, playback over DDS, recording, scored evaluation and the replay loop."""
