"""Moved: workbench.checkpoint (tensors) and workbench.checkpoint_files (folders, JSON, no torch).
This module goes away once every importer uses those."""

from workbench.checkpoint import (  # noqa: F401
    Checkpoint,
    check_finite,
    check_shapes,
    load_checkpoint,
    load_int8_state,
    read_tensors,
    save_checkpoint,
    save_tensors,
)
from workbench.checkpoint_files import (  # noqa: F401
    FORMAT_VERSION,
    REQUIRED_FILES,
    TEMP_PREFIX,
    check_meta,
    checkpoint_name,
    guard_run_folder,
    read_checkpoint_config,
    read_json,
    recover_interrupted_saves,
    resolve_checkpoint,
    update_meta,
    write_json,
)
from workbench.errors import first_line  # noqa: F401
