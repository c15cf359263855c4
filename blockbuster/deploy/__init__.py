"""What only deployments use: the ``segment`` and ``watch-acquisitions`` flows, their
parameter models, path rules (data roots), the output lock, settings and ``serve``.
"""

from blockbuster.io import OutputLock

from ._params import one_line_validation_error
from ._paths import (
    MAX_ATTEMPTS,
    check_allowed_path,
    default_output,
    lock_path,
    output_state,
)
from ._segment import (
    prepare_segment,
    run_segment,
    segment,
)
from ._serve import (
    build_deployments,
    check_settings,
    describe_deployments,
    serve,
    watch_schedule,
)
from ._settings import Settings, get_settings
from ._watch import (
    acquisition_finished,
    find_acquisitions,
    scan_folder,
)

__all__ = [
    "MAX_ATTEMPTS",
    "OutputLock",
    "Settings",
    "acquisition_finished",
    "build_deployments",
    "check_allowed_path",
    "check_settings",
    "default_output",
    "describe_deployments",
    "find_acquisitions",
    "get_settings",
    "lock_path",
    "one_line_validation_error",
    "output_state",
    "prepare_segment",
    "run_segment",
    "scan_folder",
    "segment",
    "serve",
    "watch_schedule",
]
