"""Print the requirements of pyproject.toml, one a line: the run-time dependencies, plus those of
the extras named on the command line. The Docker build installs them before copying the source,
so that a change to the code does not re-install the dependencies."""

import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
