"""The MonoOcc network, one module per stage of the data flow:

backbone (image features) -> heads2d (2D semantic auxiliary head) -> proposal (monocular
depth, lifting, BEV U-Net query proposal) -> deformable (deformable attention) ->
voxel_transformer (cross/self attention, ICCA) -> head (occupancy head); cross_view (teacher
only), losses, and monoocc (the assembled student/teacher network); export_friendly holds the
few ops written out for a fast ONNX export.
"""
