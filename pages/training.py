import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from core.appstate import load_state
from core.archs import ARCHITECTURES
from core.config import TrainConfig, default_num_workers
from core.runs import comparison_twin, launch, list_runs, read_records, request_stop, run_progress, run_status
from core.surgery import FREEZE_MODES
from core.train import RunDir
from core.workspace import runs_dir
from pages.common import data_root, default_arch, fmt_pct, resolve_weights_file, user_errors

st.title("3 · Training")
st.caption("Cross-entropy + SGD in a background process. Reruns, page switches, reloads and closed tabs do not stop it.")

state = load_state()
arch = default_arch()
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


# ----------------------------------------------------------------------------- settings
with st.expander("Settings", expanded=not st.query_params.get("run")):
    st.markdown(f"**Model:** {ARCHITECTURES[arch].summary} · head variant `{state['variant'] or 'replace'}` "
                "(change it on the Model surgery page)")
    c1, c2, c3 = st.columns(3)
    pretrained = c1.toggle("Pretrained weights", value=state["weights_mode"] == "pretrained", key="tr_pretrained",
                           help="Off: train from scratch (random initialisation) to check what pretraining buys.")
    freeze = c2.radio("Fine-tune mode", list(FREEZE_MODES), index=list(FREEZE_MODES).index(state["freeze"]),
                      key="tr_freeze", format_func=lambda m: FREEZE_MODES[m])
    with c3:
        flip = st.checkbox("Random horizontal flip", key="tr_flip")
        letterbox = st.checkbox("Letterbox (the tutorial's preprocessing)", key="tr_letterbox")
        feature_cache = st.checkbox("Cache backbone features when the body is frozen", value=True, key="tr_cache",
                                    help="Same result, much faster: each image goes through the frozen body once.")
    c1, c2, c3 = st.columns(3)
    epochs = c1.slider("Epochs", 1, 50, 5, key="tr_epochs")
    batch_size = c2.select_slider("Batch size", [1, 2, 4, 8, 16, 32, 64], value=8, key="tr_batch")
    lr = c3.select_slider("Learning rate (log scale)", LRS, value=1e-3, key="tr_lr", format_func=lambda v: f"{v:g}")
    c1, c2, c3 = st.columns(3)
    momentum = c1.slider("Momentum", 0.0, 0.99, 0.9, 0.01, key="tr_momentum")
    workers = c2.slider("Data-loading workers", 0, 8, default_num_workers(), key="tr_workers")
    seed = c3.number_input("Seed", 0, 1_000_000, int(state["seed"]), key="tr_seed",
                           help="Sets the split (as on the Dataset page), the new head's initialisation "
                                "and the data order; the same seed repeats a run exactly.")

    weights = resolve_weights_file(arch, {**state, "weights_mode": "pretrained" if pretrained else "scratch"})
    if pretrained and weights is None:
        st.warning(f"No {arch} weights are on this machine: the run would start from scratch. "
                   "Add weights on the Model surgery page, or pick efficientnet_lite0 there.")
    if not pretrained and freeze == "head":
        st.info("From scratch with a frozen body trains only a linear layer on random features. "
                "Choose 'every layer trains' for a real from-scratch baseline.")
    cfg = TrainConfig(arch=arch, head_variant=state["variant"], freeze=freeze, weights=weights if pretrained else None,
                      epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, seed=int(seed),
                      num_workers=workers, flip=flip, letterbox=letterbox, feature_cache=feature_cache,
                      train_ratio=state["train_ratio"], data_root=data_root())
    st.caption(f"Data: `{cfg.data_root}` (train ratio {cfg.train_ratio})")
    if st.button("Start training", type="primary", key="tr_start"):
        with user_errors():
            path = launch(cfg)
        st.query_params["run"] = path.name
        st.rerun()


# ----------------------------------------------------------------------------- the followed run
def followed_run() -> Path | None:
    name = st.query_params.get("run")
    if name and (runs_dir() / name).is_dir():
        return runs_dir() / name
    running = [r for r in list_runs(runs_dir()) if r.status == "running"]
    return running[0].path if running else None


def loss_charts(records: list[dict]) -> None:
    batches = pd.DataFrame([r for r in records if r["type"] == "batch"])
    epochs = pd.DataFrame([r for r in records if r["type"] == "epoch"])
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Batch loss**")
        if len(batches):
            total = batches["total"].max()
            batches["images seen"] = (batches["epoch"] - 1) * total + batches["seen"]
            st.altair_chart(alt.Chart(batches).mark_line(point=True).encode(
                x="images seen:Q", y=alt.Y("loss:Q", title="loss"), tooltip=["epoch", "batch", "loss"]),
                width="stretch")
        else:
            st.caption("A point every 10 batches (cached-feature runs on small data may log none).")
    with c2:
        st.markdown("**Per epoch: loss and test accuracy**")
        if len(epochs):
            long = epochs.melt(id_vars=["epoch"], value_vars=["train_loss", "test_loss", "test_acc"],
                               var_name="metric", value_name="value")
            st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
                x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y="value:Q", color="metric:N",
                tooltip=["epoch", "metric", alt.Tooltip("value:Q", format=".4f")]), width="stretch")
        else:
            st.caption("Appears after the first epoch's test pass.")


def live_view(run_path: Path, was_running: bool) -> None:
    records = read_records(run_path)
    status, reason = run_status(run_path)
    start = next((r for r in records if r["type"] == "start"), None)
    head = st.columns([3, 1])
    with head[0]:
        fraction, text = run_progress(records)
        st.progress(fraction if status == "running" else (1.0 if status == "completed" else fraction),
                    text=f"**{status}** · {text}" if status == "running" else f"**{status}**")
        if start:
            st.caption(f"Device: **{start['device_name']}** · path: {start['path']} · {start['train_size']} train / "
                       f"{start['test_size']} test images · {start['trainable_params']:,} trainable parameters")
    with head[1]:
        if status == "running" and st.button("Stop", key="tr_stop", help="Ends after the current batch; "
                                             "the last completed epoch's checkpoint is kept."):
            request_stop(run_path)
            st.toast("Stop requested")
    if status == "failed":
        st.error(f"The run failed: {reason}")
    elif status == "stopped":
        st.warning(reason or "The run was stopped.")
    loss_charts(records)
    if was_running and status != "running":
        st.rerun()  # redraw the whole page once: results appear and the timer stops


st.divider()
run_path = followed_run()
if run_path is None:
    st.info("No run is being followed. Press **Start training** above, or pick a run below.")
else:
    is_running = run_status(run_path)[0] == "running"
    st.subheader(f"Run {run_path.name}")
    st.fragment(live_view, run_every=1.0 if is_running else None)(run_path, is_running)


# ----------------------------------------------------------------------------- results of a finished run
def results(run_path: Path) -> None:
    records = read_records(run_path)
    epochs = [r for r in records if r["type"] == "epoch"]
    start = next((r for r in records if r["type"] == "start"), None)
    if not epochs or start is None:
        return
    classes, last = start["classes"], epochs[-1]
    st.subheader("Results (last epoch)")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**Per-class accuracy** · overall {fmt_pct(last['test_acc'])}")
        per_class = pd.DataFrame({"class": classes, "accuracy": last["per_class_acc"]})
        st.altair_chart(alt.Chart(per_class).mark_bar().encode(
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("class:N", sort=None),
            tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%")]), width="stretch")
    with c2:
        st.markdown("**Confusion matrix** (rows: true class, columns: predicted)")
        cells = pd.DataFrame([{"true": classes[i], "predicted": classes[j], "count": n}
                              for i, row in enumerate(last["confusion"]) for j, n in enumerate(row)])
        base = alt.Chart(cells).encode(x=alt.X("predicted:N", sort=classes), y=alt.Y("true:N", sort=classes))
        dark = alt.datum.count > cells["count"].max() / 2
        st.altair_chart(base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")))
                        + base.mark_text().encode(text="count:Q", color=alt.condition(dark, alt.value("white"),
                                                                                      alt.value("black"))),
                        width="stretch")
    predictions_file = RunDir(run_path).predictions
    if predictions_file.exists():
        wrong = [p for p in json.loads(predictions_file.read_text()) if p["label"] != p["pred"]]
        shown = wrong[:24]
        st.markdown(f"**Misclassified test images** ({len(wrong)}{f', the first {len(shown)} shown' if len(wrong) > len(shown) else ''})")
        if wrong:
            st.image([p["path"] for p in shown], width=110,
                     caption=[f"{classes[p['label']]} → {classes[p['pred']]} ({p['prob']:.0%})" for p in shown])
        else:
            st.caption("None: every test image was classified correctly.")


def start_twin(run_path: Path) -> None:
    """One click to the other side of "pretrained vs from scratch": same settings, other weights."""
    cfg = TrainConfig.load(RunDir(run_path).config)
    twin = comparison_twin(cfg, resolve_weights_file(cfg.arch, {**state, "weights_mode": "pretrained"}))
    if twin is None:
        return
    text = ("Train the same from scratch (every layer) to compare" if cfg.weights
            else "Train the same with pretrained weights (head only) to compare")
    if st.button(text, key="tr_twin"):
        with user_errors():
            path = launch(twin)
        st.session_state["tr_compare"] = [run_path.name, path.name]
        st.query_params["run"] = path.name
        st.rerun()


if run_path is not None and run_status(run_path)[0] != "running":
    with user_errors():
        results(run_path)
        start_twin(run_path)


# ----------------------------------------------------------------------------- all runs
st.divider()
st.subheader("All runs")
runs = list_runs(runs_dir())
if not runs:
    st.caption("Runs appear here once started.")
else:
    def label(r) -> str:
        c = r.config
        return f"{'pretrained' if c.get('weights') else 'scratch'} · {c.get('freeze')} · {c.get('arch')} · {r.name}"

    table = pd.DataFrame([{"run": r.name, "status": r.status, "arch": r.config.get("arch"),
                           "weights": "pretrained" if r.config.get("weights") else "scratch",
                           "freeze": r.config.get("freeze"), "epochs": f"{r.epochs_done}/{r.config.get('epochs')}",
                           "lr": r.config.get("lr"), "batch": r.config.get("batch_size"),
                           "best acc": r.best_acc} for r in runs])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"best acc": st.column_config.NumberColumn(format="percent")})
    c1, c2 = st.columns([3, 1])
    follow = c1.selectbox("Follow a run", [r.name for r in runs], key="tr_follow",
                          index=[r.name for r in runs].index(run_path.name) if run_path and run_path.name in
                          [r.name for r in runs] else 0)
    if c2.button("Follow", key="tr_follow_btn"):
        st.query_params["run"] = follow
        st.rerun()
    picked = st.multiselect("Compare runs (overlay their curves)", [r.name for r in runs], key="tr_compare",
                            format_func=lambda n: label(next(r for r in runs if r.name == n)))
    if picked:
        rows = []
        for name in picked:
            info = next(r for r in runs if r.name == name)
            for rec in read_records(info.path):
                if rec["type"] == "epoch":
                    rows += [{"run": label(info), "epoch": rec["epoch"], "metric": m, "value": rec[m]}
                             for m in ("test_acc", "test_loss")]
        if rows:
            data = pd.DataFrame(rows)
            c1, c2 = st.columns(2)
            for col, metric in zip((c1, c2), ("test_acc", "test_loss")):
                with col:
                    st.markdown(f"**{metric.replace('_', ' ')}**")
                    st.altair_chart(alt.Chart(data[data["metric"] == metric]).mark_line(point=True).encode(
                        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y="value:Q",
                        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=1, labelLimit=600))),
                        width="stretch")
