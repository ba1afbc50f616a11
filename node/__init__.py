"""The DICOM AI integration node.

SIGINT is this node's stop signal (``serve`` stops its worker with it, Ctrl-C stops any command). A process started
as a background shell job (``dicom-node serve &``, a CI script's ``&``) inherits SIGINT *ignored*, and so would
every child it starts: a SIGINT then was lost, and ``serve`` waited a whole lease before killing its worker. So the
first thing the package does, before it imports anything else, is to restore Python's own SIGINT handler
(KeyboardInterrupt) when SIGINT is ignored. From this line on, a SIGINT stops the process; one that arrives while
the interpreter itself is still starting (before this line) is discarded by the kernel and cannot be promised.
"""

import signal as _signal

try:
    if _signal.getsignal(_signal.SIGINT) is _signal.SIG_IGN:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
except ValueError:  # imported first from a thread other than the main one: signals are the main thread's to set
    pass
