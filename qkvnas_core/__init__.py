"""What every layer shares and no layer owns: the bad-input error, the file helpers, counts and durations."""
from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path, read_json_object, write_bytes_atomic, write_json_atomic, write_text_atomic
from qkvnas_core.units import format_count, format_duration, parse_count

__all__ = ["UsageError", "atomic_path", "format_count", "format_duration", "parse_count", "read_json_object",
           "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]
