"""The ground floor of nas/: what every room stands on and imports down to. What a search and the commands are set
with, and the words the settings are spelt in.

    requests.py     the settings dataclasses (SearchSettings, RetrainRequest, TrainRequest, ParetoRequest,
                    ExportRequest) and what is derived from their fields: flags, API keywords, checks, the
                    resumable set
    flags.py        the argparse types every value goes through, the flags' one vocabulary, the recipe flags
    naming.py       how a message names a setting (--flag, or keyword= inside the Python API)
    config.py       a search's settings from a YAML/JSON config file and the flags over it
    objectives.py   what a search optimises and each cost's limit setting
    loggers.py      --logger: the trackers a search may report to
    trial_ids.py    how a trial is named (t0007)

Nothing here imports a room above (engine, runs, runtime, winners) or the front door; setup.cfg's import contract
checks it. Imported on first use (PEP 562).
"""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, dict.fromkeys((
    "EARLIER_DEFAULTS", "RENAMED", "RETRAIN_GROUPS", "SEARCH_GROUPS", "TRANSFER_GROUPS", "TRAIN_GROUPS",
    "PARETO_GROUPS", "EXPORT_GROUPS", "RetrainRequest", "SearchSettings", "TrainRequest", "ParetoRequest",
    "ExportRequest", "Value", "add_setting_flags", "check_value", "default_run_name", "given_settings",
    "keyword_parsers", "keyword_signature", "parser_of", "renamed", "resumable", "settings_of", "check_settings",
    "is_switch", "value_text"), "requests"))
