"""What pyproject.toml cannot say: experiments/ ships inside the package as jaxtl.experiments.

The experiment configs live at the repository's top level (that is where people look for them)
and are installed as ``jaxtl/experiments/*.py``, so `jaxtl run strategies` works from a wheel
(``pip install .`` or from git, as on Colab) as well as from a source checkout.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["jaxtl", "jaxtl.*"]), "jaxtl.experiments"],
    package_dir={"jaxtl.experiments": "experiments"},
)
