"""CPU thread pools: numpy's BLAS (and OpenCV's copy) runs on one thread in the package's processes.

numpy (OpenBLAS), torch (OpenMP), faiss and onnxruntime each keep a pool of threads, one per
core. OpenBLAS's workers spin after every call, so on a small robot's CPU they take the cores
from the network that runs next: on this 2-core machine the DINOv2-S forward took 138 ms with
them and 99 ms without, and re-ranking doubled (bench/per_frame.py). The package's numpy
products are small (keypoint matching, pose residuals), so one thread loses nothing there;
torch, faiss and onnxruntime keep their pools.
"""

from __future__ import annotations

import os

_done = False


def single_threaded_numpy_blas() -> bool:
    """Limit every loaded OpenBLAS but faiss's (numpy's, OpenCV's) to one thread (once per process). Left alone when the user set
    OPENBLAS_NUM_THREADS or OMP_NUM_THREADS; returns whether a limit was applied."""
    global _done
    if _done or "OPENBLAS_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return False
    import numpy  # noqa: F401 (its BLAS must be loaded to be found)
    from threadpoolctl import ThreadpoolController

    # numpy's wheel bundles its OpenBLAS, a distribution's numpy links the system one; faiss's
    # bundled copy keeps its threads (vocabulary k-means is a large product)
    numpy_blas = [lib for lib in ThreadpoolController().lib_controllers
                  if lib.internal_api == "openblas" and "faiss" not in lib.filepath]
    for lib in numpy_blas:
        lib.set_num_threads(1)
    _done = True
    return bool(numpy_blas)
