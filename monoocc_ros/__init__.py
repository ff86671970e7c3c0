"""monoocc_ros: monocular 3D semantic occupancy (MonoOcc) as a ROS 2 perception package."""

# Why extend __path__: in the pip environment of `make setup`, our source package is
# installed editable (it lives in the repository) while the rosidl toolchain installs
# the generated `monoocc_ros.msg` subpackage into the virtualenv's site-packages.
# pkgutil.extend_path makes every `monoocc_ros/` directory on sys.path one package,
# so `monoocc_ros.geometry` (source) and `monoocc_ros.msg` (generated) both import,
# and source edits take effect without reinstalling. In a colcon workspace both parts
# are installed into the same directory and this line is a no-op. We prefer this over
# a namespace package (no __init__.py) because the generated tree ships its own
# __init__.py, and over copying generated code into the source tree (it is build output).
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
