"""numpy's BLAS runs on one thread in the package's processes (core/threads.py); torch keeps
its pool, faiss its BLAS, and a user's own OPENBLAS_NUM_THREADS / OMP_NUM_THREADS is left alone."""

import json
import os
import subprocess
import sys

from ..conftest import REPO

SCRIPT = """
import json, torch
from threadpoolctl import threadpool_info
from anyloc_ros.core.threads import single_threaded_numpy_blas
applied = single_threaded_numpy_blas()
again = single_threaded_numpy_blas()
print(json.dumps({"applied": applied, "again": again, "torch": torch.get_num_threads(),
                  "openblas": [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]}))
"""


def run(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_numpy_blas_gets_one_thread_and_torch_keeps_its_pool():
    out = run()
    assert out["applied"] is True and out["again"] is False
    assert out["openblas"] == [1]
    assert out["torch"] == os.cpu_count()


def test_faiss_keeps_its_blas_threads():
    code = ("import faiss, json; from threadpoolctl import threadpool_info; "
            "from anyloc_ros.core.threads import single_threaded_numpy_blas; single_threaded_numpy_blas(); "
            "print(json.dumps({i['filepath']: i['num_threads'] for i in threadpool_info() if i['internal_api'] == 'openblas'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")})
    threads = json.loads(r.stdout.strip().splitlines()[-1])
    assert [n for path, n in threads.items() if "faiss" in path] == [os.cpu_count()]
    assert [n for path, n in threads.items() if "faiss" not in path] == [1]


def test_a_users_thread_setting_is_left_alone():
    out = run(OPENBLAS_NUM_THREADS="2")
    assert out["applied"] is False and out["openblas"] == [2]
    assert run(OMP_NUM_THREADS="2")["applied"] is False


ENTRY = """
import contextlib, io, json, sys
from threadpoolctl import threadpool_info
from anyloc_ros.core.errors import AnyLocError
def blas():
    return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]
seen = {}
if sys.argv[1] == "node":
    from anyloc_ros.nodes.spin import run_node
    def factory():
        seen["inside"] = blas()
        raise AnyLocError("stop here")
    run_node(factory, [])
else:
    from anyloc_ros.tools.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        main(["params"])
    seen["inside"] = blas()
print(json.dumps(seen))
"""


def test_the_nodes_and_the_cli_apply_it():
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    for entry in ("node", "cli"):
        r = subprocess.run([sys.executable, "-c", ENTRY, entry], cwd=REPO, env=base, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert set(json.loads(r.stdout.strip().splitlines()[-1])["inside"]) == {1}, entry  # numpy's (and OpenCV's)
