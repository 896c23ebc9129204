"""The search engine: one search session (Ray Tune + ASHA), the budgeted Optuna searcher, the rung
scheduler, the first draws, the parameter budget, the objectives and their limits, the hypervolume, and the
progress lines of a running search.
"""
