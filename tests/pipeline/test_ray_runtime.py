"""Where a local Ray listens does not depend on who imported Ray first."""

import os
import subprocess
import sys

_RAY_FIRST = """
import ray
from ray._private import services
from pipeline import ray_runtime
ray_runtime._keep_on_loopback()
print(services.get_node_ip_address())
"""


def test_a_local_ray_takes_the_loopback_address_even_when_ray_was_imported_first():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    out = subprocess.run(
        [sys.executable, "-c", _RAY_FIRST], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "127.0.0.1"
