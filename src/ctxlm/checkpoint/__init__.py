"""The one checkpoint format: a folder with config.json + model.safetensors + tokenizer files.

safetensors holds tensors only, so loading a checkpoint never runs code. The file's raw header is checked first
(its length against the file's size, its JSON, every tensor's dtype, shape and byte range), then every tensor's
name, shape and dtype against the model the config describes, all before any tensor is read; a mismatch names
the file and the tensor. A pickle posing as a checkpoint is refused, never unpickled.

Writing is atomic: files go to a temporary sibling folder `.NAME.tmp.HOST.PID.RANDOM`, flushed to disk, which
then takes the place of the folder in one atomic exchange (Linux), so that at every moment the folder holds the
previous checkpoint or the new one, never a mix nor nothing. Where the exchange is unavailable the old folder is
first renamed to `.NAME.old`; a crash between that rename and the next leaves no folder, and readers
(`load_checkpoint`, `resolve`) fall back to `.NAME.old`, which the next save (or `recover`) puts back. A save
killed midway leaves its temporary folder, which loading ignores and the next save on this host removes.

- `atomic`: atomic folder writes (`write_folder`) and removals (`remove_folder`), for any folder.
- `safetensors_checks`: safetensors headers and tensors, checked against a model before any tensor is read.
- `folder`: the model folder: `save`, `load_checkpoint`, `resolve`, `recover`, the tokenizer files.

The names below are re-exported here; patch a function (in tests) in the module that defines it.
"""

from ctxlm.checkpoint.atomic import remove_folder, write_folder
from ctxlm.checkpoint.folder import (
    CONFIG_FILE,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
    has_tokenizer,
    is_checkpoint,
    is_resumable,
    load_checkpoint,
    load_tokenizer,
    recover,
    resolve,
    save,
)
from ctxlm.checkpoint.safetensors_checks import (
    MAX_HEADER_BYTES,
    SAFETENSORS_DTYPES,
    check_dtypes,
    check_shapes,
    load_weights,
    read_safetensors_header,
    read_weights,
    refuse_pickle,
)

__all__ = [
    "CONFIG_FILE", "MAX_HEADER_BYTES", "SAFETENSORS_DTYPES", "TRAINER_STATE_FILE", "WEIGHTS_FILE", "check_dtypes",
    "check_shapes", "has_tokenizer", "is_checkpoint", "is_resumable", "load_checkpoint", "load_tokenizer",
    "load_weights", "read_safetensors_header", "read_weights", "recover", "refuse_pickle", "remove_folder", "resolve",
    "save", "write_folder",
]
