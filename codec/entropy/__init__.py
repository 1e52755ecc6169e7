"""Entropy coders. Importing this package registers the built-in codecs."""
from . import raw, zstd  # noqa: F401
from . import exponent, value16  # noqa: F401
from ..transforms import bytegroup  # noqa: F401  (registers `bytegroup`)
from . import llm_arith  # noqa: F401  (registers `llm`; imports no torch until used)
from ..transforms import fp8, ggml, int4  # noqa: F401  (register `fp8`, `ggml`, `int4pack`)
from .. import quantize  # noqa: F401  (registers the LOSSY `quant` codec; imports torch only when used)
