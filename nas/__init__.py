"""The search and everything a user drives: run a search, read its results, draw its front, retrain winners.

From Python (nas/api.py, docs/notebook.md): `nas.search(budget="3.1M", ...)`, `nas.resume(run)`,
`nas.load_run(run)`, `nas.pareto(run)`, `nas.retrain(run, top=1)`. Commands live in `nas.commands` (one module
each, reached through `nas.cli`); nothing imports them.
"""
import sys
import types

from qkvnas_core.lazy import lazy_exports

API = ("search", "search_settings", "resume", "load_run", "pareto", "retrain", "SearchRun")

__getattr__, __all__ = lazy_exports(__name__, {
    **dict.fromkeys(API, "api"),
    "SearchSettings": "search", "run_search": "search", "resume_search": "search",
    "SearchResult": "search", "BudgetedSearcher": "searcher", "render_trials": "searcher", "Budget": "budget",
    "check_feasible": "budget", "Run": "results", "read_run": "results", "load_trials": "results",
    "find_run": "results", "pareto_front": "pareto", "write_pareto": "pareto", "plot_front": "pareto",
    "Progress": "progress", "RetrainRequest": "retrain", "retrain_run": "retrain",
})


class _Package(types.ModuleType):
    """`nas` itself. Importing a submodule binds it on its package, so nas/search.py, pareto.py and retrain.py
    would replace the API's nas.search, nas.pareto and nas.retrain once imported: the names stay the API's, and
    the submodules are read from sys.modules (`from nas.search import SearchSettings` as ever)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
