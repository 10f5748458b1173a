"""Every tunable of the fast backend, in one place, each with what it trades.

None of these is tuned to one machine. Where the best value depends on the machine, the
candidates are measured on the user's machine (:mod:`._tune`) and these are only the
defaults used with ``FASTALEX_TUNE=0`` or the bounds of what is measured. The shape of the
micro-kernel's register tile comes from the compile target (:mod:`._target`). Read at call
time, so a test (or a user) can change one for the process: ``tunables.X = ...``.
"""

from __future__ import annotations

import os

# ----------------------------------------------------------------------------- convolution

#: Winograd is planned when each group has at least this many input and output channels
#: (after space-to-depth). Thinner products cannot pay for the input and output transforms
#: (4-6x the data of the input). Lower: more shapes on Winograd; tests set it to 1.
WINOGRAD_MIN_CHANNELS = 16

#: With ``FASTALEX_TUNE=0``: Winograd whose products run on NumPy's sgemm (a group's output
#: channels not a multiple of the micro-kernel's columns) only from this many images; for one
#: image those products are too small for BLAS. (Tuned: measured instead.)
WINOGRAD_MIN_BATCH = 2

#: With ``FASTALEX_TUNE=0``: the fused Winograd schedule (one launch, one task per tile row
#: reading all the transformed weights) while the tasks together read at most this many bytes
#: of weights; past it, the chunked schedule (three launches per chunk, weights read once per
#: chunk). Fused saves launches and keeps a row's data in L2; chunked reads the weights fewer
#: times. (Tuned: both measured.)
FUSED_MAX_WEIGHT_TRAFFIC = 700 << 20

#: Bytes of transformed input and products per chunk of the chunked Winograd schedule: small
#: enough to stay in the last-level cache between the three launches, large enough that each
#: launch has work for every thread. The tuner also measures a quarter of it.
CHUNK_BYTES = 8 << 20

#: Bytes ahead of the row it multiplies that the micro-kernel prefetches from its packed
#: operand, in convolutions (their transformed weights; not in dense layers, whose packed
#: samples stay in L2): about memory latency x one core's bandwidth.
#: At batch 1 the 13x13 layers' weights come from memory each pass (the dense layers' stream
#: evicts them) and are used by a few rows only; prefetching overlaps their loads with the
#: products (Zen 4: torchvision's convolutions at batch 1 ~5% faster, conv2 ~10%; batch 16
#: unchanged). Larger: more memory in flight, more lines fetched past the last task's panel.
GEMM_PREFETCH_BYTES = 6 << 10

#: Columns of one im2col chunk's product (samples x pixels): wide enough for BLAS to run at
#: full speed, small enough for the packed matrix to stay in cache.
GEMM_COLUMNS = 2048

# ----------------------------------------------------------------------------- dense

#: With ``FASTALEX_TUNE=0``: dense layers with at least this many samples run the
#: micro-kernel (the weight read once for all samples); fewer run the register-tiled
#: streaming kernel (the weight read once per 4 samples, at the memory's full rate).
DENSE_MICROKERNEL_MIN_BATCH = 5

# ----------------------------------------------------------------------------- other kernels

#: Pixels per task of the LRN kernel: a task's window sums stay in L1.
LRN_BLOCK = 512

#: Input values a max-pooling task covers at least (whole image planes): each task has a fixed
#: cost (a row buffer, a thread's wake-up), so small maps go several to a task (AlexNet's
#: 13x13: 24 planes, 55x55: one). Higher: fewer, longer tasks (less overhead, coarser balance).
POOL_TASK_VALUES = 4096

# ----------------------------------------------------------------------------- threads

#: Seconds ``os.fork()`` waits for a kernel in flight in another thread before forking anyway.
FORK_WAIT = 10.0

#: Keep the other cores from halting between a forward pass's kernels (idle-priority threads
#: that yield in a loop, Linux; see ``_awake``): helps where a virtual CPU wakes slowly after
#: an idle pause, costs up to one more busy core while a pass runs. ``FASTALEX_SPIN=0``: off.
SPIN = os.environ.get("FASTALEX_SPIN", "1").strip().lower() not in ("0", "false", "no", "off")

# ----------------------------------------------------------------------------- the tuner

#: Timed rounds per candidate when a shape is tuned (after one warm-up call each), at least:
#: more rounds, a surer choice on a noisy machine, a longer first call.
TUNE_REPEATS = 3
#: ... and more rounds, up to TUNE_MAX_REPEATS, while tuning the shape has taken less than
#: TUNE_SETTLE_SECONDS: fast shapes (batch 1, ~1 ms a call) get ~10 rounds for a few tens of
#: ms. With 3, a cloud VM's noise once kept a schedule 2x slower than the best for a layer
#: (torchvision's conv1 at batch 1: 1.44 ms instead of 0.76), in the wisdom file for good.
TUNE_MAX_REPEATS = 10
TUNE_SETTLE_SECONDS = 0.05
#: ... fewer rounds once tuning one shape has taken this long (seconds).
TUNE_MAX_SECONDS = 1.0
