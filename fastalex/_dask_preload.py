"""Preload module of the workers :func:`fastalex.distributed.local_cluster` starts (Dask imports,
and re-imports, a preload module in each worker; this one is kept apart so that
:mod:`fastalex.distributed` and its exception classes are imported only once).

The workers ignore SIGINT: Ctrl-C in a terminal reaches the whole process group; the client
(the ``fastalex`` command) handles it and closes the cluster, instead of every worker printing
a KeyboardInterrupt traceback.
"""

import signal
import threading


def dask_setup(worker):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
