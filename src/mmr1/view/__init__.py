"""`mmr1 view`: a local, read-only web viewer of runs (curves, tables, rollouts, eval predictions) and its
self-contained HTML export. `data` reads runs, `app` serves them (FastAPI + uvicorn), `export` inlines them."""
