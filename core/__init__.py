"""core: the transfer-learning engine behind the dashboard (no Streamlit here).

Split a class-folder dataset, adapt a pretrained CNN with a surgery report, train as a
stream of metric records, predict from a run. The pages, the CLI and the tests all use it.
"""
