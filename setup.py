"""pip installation of the monoocc_ros Python package (the colcon build uses CMakeLists.txt).

`make setup` installs this editable into .venv and the generated message beside it; see
the comment in monoocc_ros/__init__.py for how the two halves form one package.
"""

from setuptools import find_packages, setup

setup(
    name="monoocc_ros",
    version="0.1.0",
    description="Monocular 3D semantic occupancy (MonoOcc) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["monoocc_ros", "monoocc_ros.*"]),
    install_requires=["numpy", "pyyaml", "tqdm", "pillow"],
    entry_points={
        "console_scripts": [
            "occupancy_node = monoocc_ros.ros.main:main",
            "monoocc = monoocc_ros.cli:main",
        ]
    },
)
