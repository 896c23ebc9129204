"""What every layer shares and no layer owns: the bad-input error and the file helpers."""
from core.errors import UsageError
from core.files import atomic_path, read_json_object, write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["UsageError", "atomic_path", "read_json_object", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]
