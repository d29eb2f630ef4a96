"""cadfd_ros: coded-aperture depth from defocus as a ROS 2 package and a Python library.

The same setup.py serves colcon (ament_python) and pip. torch is deliberately not in
install_requires: an unpinned torch pulls several GB of CUDA wheels, so the Makefile
installs the pinned CPU build first (see README)."""
from glob import glob

from setuptools import find_packages, setup

package_name = "cadfd_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={
        package_name: [
            "data/*.png",
            "data/*.npy",
            "data/*.npz",
            "data/*.json",
            "data/*.md",
            "prior/default/*.json",
            "prior/default/*/*.json",
            "prior/default/*/*.safetensors",
            "prior/default/*.md",
        ]
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*")),
        ("share/" + package_name + "/urdf", glob("urdf/*.xacro")),
        ("share/" + package_name + "/msg", glob("msg/*.msg")),
    ],
    install_requires=[
        "numpy",
        "scipy",
        "pillow",
        "tifffile",
        "matplotlib",
        "tqdm",
        "safetensors",
        "diffusers",
        "scikit-image",
    ],
    zip_safe=True,
    maintainer="cadfd_ros maintainers",
    maintainer_email="cadfd.maintainers@cadfd-ros.org",
    description="Coded-aperture depth from defocus with diffusion posterior sampling, for ROS 2.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "cadfd = cadfd_ros.cli:main",
            "cadfd_node = cadfd_ros.node:main",
        ],
    },
)
