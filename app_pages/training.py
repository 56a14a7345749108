import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.architectures import render_architecture_table
from app_pages.charts import (
    compare_chart,
    confusion_chart,
    loss_charts,
    lr_finder_chart,
    per_class_chart,
    reliability_chart,
    runs_table,
    selected_cell,
    stage_label,
    test_cell,
    trials_chart,
)
from app_pages.choices import (
    KEEP_GROUPS,
    current_split,
    data_root,
    default_arch,
    load_state,
    resolve_weights_file,
    save_state,
    split_line,
    split_summary,
    stored_check,
    with_version,
)
from app_pages.images import run_predictor, show_explanation, thumbnail
from app_pages.work import reported, run_with_stop, user_errors, was_stopped
from core.analysis.compare import compare_runs
from core.analysis.datacheck import check_of_run, data_fingerprint
from core.analysis.report import SHOWN_CLASSES, RunReport, TestImage, evaluate_tta, report_stamp, run_report
from core.jobs.queue import (
    cancel,
    comparison_twin,
    dispatch,
    find_twin,
    launch,
    max_running,
    queue,
    request_stop,
    resume,
    run_progress,
    seconds_left,
    smooth_eta,
)
from core.models.weights import NO_WEIGHTS, PRETRAINED
from core.platform.accel import plan_threads
from core.platform.errors import UserError
from core.platform.figures import pct
from core.platform.workspace import allowed_roots, cache_dir, checks_dir, runs_dir
from core.runs.files import read_records
from core.runs.listing import RunInfo, find_run, list_runs, read_run
from core.runs.rundir import RunDir, load_config
from core.spec.archs import ARCHITECTURES
from core.spec.choices import Optimizer
from core.spec.config import (
    AUGMENTATIONS,
    FREEZE_MODES,
    RECIPES,
    SCHEDULES,
    TTA_MODES,
    Choices,
    TrainConfig,
    field_range,
)
from core.spec.records import Features, Progress, Records, Start
from core.spec.states import RunState
from core.training.lr_find import find_lr
from core.training.tune import tune_head

OPTIMIZERS = list(Optimizer.values())
RECIPE_NAMES = {"single": "Head only (one stage)", "fine_tune": "Staged fine-tune (head, then last stage)"}
RECIPE_HELP = (f"Staged: {RECIPES['fine_tune']}. Head only: {RECIPES['single']}. Measured (EfficientNet-Lite0, "
               "2-core CPU, the docs' benchmark page): on 3,781 real clothing photos the staged recipe with AdamW "
               "reached 87.0% test accuracy where head only with SGD reached 84.7%, in 1.3× the time; on a hard "
               "generated set 85.0% against 79.0%, in 1.2× the time. Head only (with AdamW) is within noise of "
               "the staged recipe there, and after a data check it reuses the check's features: seconds. Cached "
               "augmented views bought nothing measurable.")
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
DEFAULTS = TrainConfig()
LIVE_EVERY_S = 1.0  # the followed run's view
LIST_EVERY_S = 2.0  # the runs table, the follow box and the comparison: new runs from other tabs or the CLI


def max_processes() -> int:
    """One process per GPU on CUDA; on a CPU up to the cores this app may use."""
    import torch

    from core.platform.accel import available_cores

    return torch.cuda.device_count() if torch.cuda.is_available() else max(1, available_cores())


def _sync(name: str, key: str, convert=lambda v: v):
    """on_change for a widget bound to one of this visitor's choices (shared with the Surgery page)."""
    return lambda: save_state(**{name: convert(st.session_state[key])})


def _model_settings(state: Choices) -> dict:
    """Weights, fine-tune mode and what the images go through."""
    c1, c2, c3 = st.columns(3)
    pretrained = c1.toggle("Pretrained weights", value=state.weights_mode == PRETRAINED, key="tr_pretrained",
                           on_change=_sync("weights_mode", "tr_pretrained", lambda v: PRETRAINED if v else NO_WEIGHTS),
                           help="Off: train from scratch (random initialisation) to check what pretraining buys.")
    with c2:
        default = TrainConfig(freeze=state.freeze).recipe  # staged unless the Surgery page chose a one-stage mode
        recipe = st.radio("Recipe", list(RECIPE_NAMES), index=list(RECIPE_NAMES).index(default),
                          key="tr_recipe", format_func=RECIPE_NAMES.get, help=RECIPE_HELP)
        if recipe == "fine_tune":  # the recipe decides what trains in each stage; the mode stays for one-stage runs
            st.caption("Stage 1: the head, on cached features. Stage 2: the last stage and the head, on cached "
                       "activations, one-cycle, the body at the body learning rate. Each stage's best epoch is "
                       "chosen on validation.")
            freeze = "head"
        else:
            freeze = st.radio("Fine-tune mode", list(FREEZE_MODES), index=list(FREEZE_MODES).index(state.freeze),
                              key="tr_freeze", format_func=lambda m: FREEZE_MODES[m],
                              on_change=_sync("freeze", "tr_freeze"))
    with c3:
        augment = st.selectbox("Augmentation", AUGMENTATIONS, index=AUGMENTATIONS.index(DEFAULTS.augment),
                               key="tr_augment", help="crop+flip: the PyTorch tutorial's RandomResizedCrop + flip; "
                                                      "letterbox+flips: the recipe's. Any augmentation trains "
                                                      "through the full forward pass (no feature cache). The Dataset "
                                                      "page previews them.")
        letterbox = st.checkbox("Letterbox (the tutorial's preprocessing)", value=state.letterbox,
                                key="tr_letterbox", on_change=_sync("letterbox", "tr_letterbox"),
                                help="The whole image on a black square instead of the weights' resize and centre "
                                     "crop. The data check preprocesses as this says, so a run reuses its features.")
        feature_cache = st.checkbox("Cache backbone features when the body is frozen", value=DEFAULTS.feature_cache,
                                    key="tr_cache", help="Same result, much faster: each image goes through the "
                                                         "frozen part of the model once.")
        views_apply = feature_cache and augment == "none" and freeze != "all" and not letterbox
        aug_views = st.slider("Augmented views (cached)", *field_range("aug_views", ui=True), DEFAULTS.aug_views,
                              key="tr_aug_views", disabled=not views_apply,
                              help="Augmentation that keeps the feature cache: K cropped, flipped, colour-shifted "
                                   "views of each training image are computed once; each epoch trains every image "
                                   "on one of them or the plain one. Costs K passes over the training images, "
                                   "once. Needs the cache, no per-batch augmentation and no letterbox.")
    return dict(pretrained=pretrained, freeze=freeze, recipe=recipe, augment=augment, letterbox=letterbox,
                feature_cache=feature_cache, aug_views=aug_views if views_apply else 0)


def _optimiser_settings(state: Choices, freeze: str, recipe: str = "single") -> dict:
    """Epochs, batches, learning rates and their schedule, processes, seed."""
    staged = recipe == "fine_tune"
    c1, c2, c3, c4 = st.columns(4)
    # The rate's default goes in through Session State, not value=: the finder's "Use …" sets it there too, and a
    # widget given both warns (with a stack trace in the server log).
    st.session_state.setdefault("tr_lr", DEFAULTS.lr)
    chosen = dict(epochs=c1.slider("Stage 1 epochs (head)" if staged else "Epochs", *field_range("epochs", ui=True),
                                   DEFAULTS.epochs, key="tr_epochs"),
                  batch_size=c3.select_slider("Batch size", [1, 2, 4, 8, 16, 32, 64], value=DEFAULTS.batch_size,
                                              key="tr_batch"),
                  lr=c4.select_slider("Learning rate (log scale)", _lr_options(), key="tr_lr",
                                      format_func=lambda v: f"{v:.3g}",
                                      help="The head's; with a one-cycle schedule (and in stage 2) its peak. Not "
                                           "sure? The learning-rate finder below suggests one for these settings."))
    if staged:
        chosen["stage2_epochs"] = c2.slider("Stage 2 epochs (last stage + head)",
                                            *field_range("stage2_epochs", ui=True), DEFAULTS.stage2_epochs,
                                            key="tr_stage2_epochs")
    chosen["optimizer"] = c2.selectbox("Optimiser", OPTIMIZERS, index=OPTIMIZERS.index(DEFAULTS.optimizer),
                                       key="tr_optimizer", format_func=lambda o: {"sgd": "SGD", "adamw": "AdamW"}[o],
                                       help="SGD: the tutorial's. AdamW: Adam with decoupled weight decay, "
                                            "fastai's default (momentum below is its beta1).")
    c1, c2, c3, c4 = st.columns(4)
    chosen["momentum"] = c1.slider("Momentum", *field_range("momentum", ui=True), DEFAULTS.momentum, 0.01,
                                   key="tr_momentum")
    chosen["num_workers"] = c2.slider("Data-loading workers", *field_range("num_workers", ui=True), plan_threads()[1],
                                      key="tr_workers",
                                      help="Image-decoding processes; the training threads take the other cores.")
    chosen["seed"] = int(c3.number_input("Seed", *field_range("seed", ui=True), int(state.seed), key="tr_seed",
                                         help="Sets the split (as on the Dataset page), the new head's "
                                              "initialisation and the data order; the same seed repeats a run."))
    chosen["processes"] = int(c4.number_input(
        "Processes", 1, max_processes(), DEFAULTS.processes, key="tr_processes",
        help="Training processes working together, one per GPU on a machine with several GPUs. On a CPU more "
             "than 1 is rarely faster: they share the same cores."))
    c1, c2, c3, c4 = st.columns(4)
    chosen["schedule"] = c1.selectbox("Learning-rate schedule", SCHEDULES, index=SCHEDULES.index(DEFAULTS.schedule),
                                      key="tr_schedule", help=f"step: × {DEFAULTS.gamma:g} every {DEFAULTS.step_size} "
                                                              "epochs (the PyTorch tutorial's StepLR); cosine: down "
                                                              "to 0 over the epochs; one_cycle: up to the learning "
                                                              f"rate over the first {DEFAULTS.warmup:.0%} of the "
                                                              "batches, then down to almost 0 (OneCycleLR)."
                                                              + (" Stage 1's: stage 2 is always one-cycle."
                                                                 if staged else ""))
    chosen["patience"] = int(c2.number_input("Stop early after epochs without a better validation accuracy (0: never)",
                                             *field_range("patience", ui=True),
                                             DEFAULTS.patience, key="tr_patience"))
    chosen["class_weights"] = c3.checkbox(
        "Class-weighted loss (imbalanced classes)", value=DEFAULTS.class_weights, key="tr_class_weights",
        help="Each class's loss is weighted by its inverse frequency in the training list; the weights are shown "
             "with the run.")
    chosen["body_lr_factor"] = float(c4.select_slider(
        "Body learning rate (× the learning rate)", [0.01, 0.03, 0.1, 0.3, 1.0], value=DEFAULTS.body_lr_factor,
        key="tr_body_lr", disabled=freeze == "head" and not staged, format_func=lambda v: f"× {v:g}",
        help="When the body's last stage or every layer trains, its pretrained layers move this much slower "
             "than the new head (fastai's discriminative learning rates); × 1: one rate for all. From scratch "
             "every layer uses the learning rate."))
    return chosen


def _lr_options() -> list[float]:
    """The slider's rates, with the finder's suggestion once the visitor took it."""
    found = st.session_state.get("tr_lr_found")
    return sorted(set(LRS) | ({found} if found else set()))


def _use_lr(value: float) -> None:
    st.session_state["tr_lr_found"] = value
    st.session_state["tr_lr"] = value


def progress_text(record) -> str | None:
    """A Progress record's line for the bar: what the phase is doing, done of total."""
    if not isinstance(record, Progress):
        return None
    return f"{record.phase.doing[:1].upper()}{record.phase.doing[1:]}… {record.done}/{record.total}"


def remembered_action(cfg: TrainConfig, name: str, label: str, *, what: str, help: str, hint: str, work):
    """A button that runs ``work()`` (a generator of Progress) with a progress bar and Stop, and this visitor's
    last result of it for these settings (None before any, with ``hint`` beside the button)."""
    key = (name, json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    c1, c2 = st.columns([2, 3])
    was_stopped(f"tr_{name}_running", what)
    if c1.button(label, key=f"tr_{name}", help=help):
        found = run_with_stop(work(), key=f"tr_{name}_running", what=what, describe=progress_text)
        if found is not None:
            st.session_state[key] = found
    result = st.session_state.get(key)
    if result is None:
        c2.caption(hint)
    return result


def render_lr_finder(cfg: TrainConfig) -> None:
    """fastai's learning-rate finder for the settings above: a sweep, its curve, a suggestion to take."""
    result = remembered_action(
        cfg, "lr_find", "Find a learning rate", what="sweep",
        help="Trains these settings for 100 mini-batches with a learning rate growing from 1e-7 to 10 and watches "
             "the loss (the model is put back afterwards). With a frozen body it takes a second or two after the "
             "feature pass.",
        hint="The finder sweeps the learning rate over a few mini-batches of the training images (never the test "
             "images) and suggests where the loss falls best (fastai's valley).",
        work=lambda: find_lr(cfg, cache_dir=cache_dir(), allowed_roots=allowed_roots()))
    if result is None:
        return
    lr_finder_chart(result)
    for note in result.notes:
        st.warning(note)
    st.caption(f"{len(result.lrs)} steps on {result.feature_path} in {result.seconds:.1f} s; {result.stopped}.")
    if result.suggestion is not None:
        suggested = float(f"{result.suggestion:.2g}")
        st.button(f"Use {suggested:g}", key="tr_lr_use", on_click=_use_lr, args=(suggested,),
                  help=f"Sets the learning rate to the valley's {result.suggestion:.3g} (rounded)"
                       + (f"; the loss falls fastest at {result.steep:.3g}" if result.steep else "") + ".")


TRIALS = 50
FINDER_AND_SEARCH = (
    "How the finder and the search relate: the finder watches the training loss over one short sweep with everything "
    "else fixed and suggests a rate where it still falls well; the search trains whole heads (rate, epochs, weight "
    "decay, momentum, label smoothing together) and scores each by cross-validated accuracy on the training images. "
    "A small rate with many epochs can do what a larger one does in few, so the search's rate may sit well below "
    "the finder's. Its first trial is the settings above, so it never picks something that scored below them; "
    "its learning rates are searched within ×/÷ 10 of the finder's suggestion once you have taken it.")


def render_head_search(cfg: TrainConfig) -> None:
    """Optuna over the head's settings, cross-validated on the training split, and a run with the best."""
    if cfg.freeze != "head" or not cfg.pretrained or cfg.augmentation != "none":
        st.caption("The head search needs pretrained weights, fine-tune mode 'only the new head' and no "
                   "augmentation: then every trial trains on cached features in milliseconds.")
        return
    found = st.session_state.get("tr_lr_found")
    centre = found if found is not None and abs(cfg.lr - found) <= 1e-12 else None  # the finder's, once taken
    st.caption(FINDER_AND_SEARCH + (f" Now: around the finder's {centre:g}." if centre else
                                    " Now: over the whole range (take the finder's suggestion to centre it)."))
    result = remembered_action(
        cfg, "tune", f"Search the head's settings ({TRIALS} trials)", what="search",
        help="Optuna (TPE, pruning) tries learning rate, weight decay, momentum, epochs and label smoothing; each "
             "trial is scored by 5-fold cross-validation on the training images. The test images are not looked "
             "at until a run trains with the best settings.",
        hint="Tries settings for the new head in seconds (it trains on the cached features), scoring each on the "
             "training images only, and offers a run with the best.",
        work=lambda: tune_head(cfg, cache_dir=cache_dir(), trials=TRIALS, seed=cfg.seed, lr_centre=centre))
    if result is None:
        return
    trials_chart(result.trials)
    for note in result.notes:
        st.caption(f"Note: {note}.")
    best = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in result.best.items()}
    st.dataframe(pd.DataFrame([best]), hide_index=True)
    st.caption(f"Best cross-validated accuracy {pct(result.best_score)} over {result.folds} folds of "
               f"{result.train_images} training images; {len(result.trials)} trials in {result.seconds:.1f} s.")
    if st.button("Start a run with the best settings", key="tr_tune_start", type="primary",
                 help="A normal run, tested on the test split; it records that its settings came from this search."):
        start(result.apply(cfg))


def render_settings(state: Choices, arch: str) -> TrainConfig:
    spec = ARCHITECTURES[arch]
    head = spec.variant(state.head_variant).description if len(spec.variants) > 1 else "a new last layer"
    st.markdown(f"**Model:** {arch} with {head} (change it on the Model surgery page)")
    with st.expander("Compare the architectures", expanded=False):
        render_architecture_table(arch)
    model = _model_settings(state)
    pretrained = model.pop("pretrained")
    optimiser = _optimiser_settings(state, model["freeze"], model["recipe"])
    weights = resolve_weights_file(arch, replace(state, weights_mode=PRETRAINED if pretrained else NO_WEIGHTS))
    if pretrained and weights is None:
        st.warning(f"No {arch} weights are on this machine: the run would start from scratch. "
                   "Add weights on the Model surgery page, or pick one whose weights ship with the app there "
                   "(efficientnet_lite0, _lite1, _lite2).")
    if not pretrained and model["freeze"] != "all":
        st.info("From scratch with a frozen body trains on top of random layers that never learn. "
                "Choose 'every layer trains' for a real from-scratch baseline.")
    checked = data_check_settings(state, arch, weights if pretrained else None)
    if state.val_ratio == 0 and optimiser["patience"]:
        st.info("Early stopping watches the validation split, and the Dataset page's validation ratio is 0: this run "
                "will not stop early.")
        optimiser["patience"] = 0
    root = data_root()
    return state.config(arch=arch, weights=weights if pretrained else None, data_root=root,
                        **with_version(root, {**model, **optimiser, **checked}))


def data_check_settings(state: Choices, arch: str, weights: str | None) -> dict:
    """What the data check of these images offers a run: keep duplicate groups on one side of the split, leave
    the label suspects out of training. Nothing unless the check was made (on the Check the data page)."""
    try:
        split = current_split(data_root(), state)
        report = stored_check(data_fingerprint(split, arch, weights))
    except UserError:
        return {}
    if report is None:
        return {}
    chosen = {}
    c1, c2 = st.columns(2)
    if report.duplicates and not split.given_by:
        if c1.checkbox(f"Keep the {len(report.duplicates)} duplicate groups on one side of the split",
                       value=bool(st.session_state.get(KEEP_GROUPS)), key="tr_keep_groups",
                       help=f"From the data check: {len(report.leaks)} groups cross the plain split, so their test "
                            "copies would be answered from memory."):
            chosen["keep_together"] = tuple(tuple(m.path for m in g.members) for g in report.duplicates)
    suspects = [i.path for i in report.label_issues if i.split == "train"]
    if suspects and c2.checkbox(f"Leave the {len(suspects)} label suspects out of training", value=False,
                                key="tr_exclude_suspects",
                                help="From the data check; the test split stays whole, so the accuracy stays "
                                     "comparable. The run records what it left out."):
        chosen["exclude"] = tuple(suspects)
    return chosen


def start(cfg: TrainConfig) -> None:
    with user_errors():
        path = launch(cfg)
    st.query_params["run"] = path.name
    st.rerun()


def followed_run() -> Path | None:
    """The run named in the URL, else the newest active one; a name from the URL must be a run here."""
    found = find_run(runs_dir(), st.query_params.get("run") or "")
    if found is not None:
        return found
    active = [r for r in list_runs(runs_dir()) if r.active]
    return active[0].path if active else None


def _time_left(run_path: Path, records) -> str:
    """", about N s left", smoothed over this visitor's redraws of the run (the raw estimate jumps)."""
    import time

    kept = st.session_state.setdefault("tr_eta", {})
    now = time.time()
    left = smooth_eta(kept.get(run_path.name), seconds_left(records, now), now)
    if left is None:
        return ""
    kept[run_path.name] = (left, now)
    return f", about {left:.0f}s left"


def render_skipped(start_record, records) -> None:
    """List entries that cannot be images, and the images each feature pass could not read, named (first few)."""
    skipped = [f"{f.split}: {f.skipped_line()}" for f in records.of(Features) if f.skipped]
    for line in filter(None, [start_record.unusable_line(), *skipped]):
        st.warning(line[:1].upper() + line[1:] + ".")


def trainable_line(start: Start) -> str:
    """"6,405 trainable parameters", or for the staged recipe each stage's count."""
    counts = [(st_.get("number"), st_.get("trainable")) for st_ in start.stages if isinstance(st_, dict)]
    if counts and all(isinstance(n, int) for _, n in counts):
        return "trainable parameters: " + ", ".join(f"{n:,} in stage {number}" for number, n in counts)
    return f"{start.trainable_params:,} trainable parameters"


def _run_facts(info: RunInfo, start: Start, records: Records) -> None:
    """What the run trains on and how: device, path, images, parameters, weights, validation, skipped images."""
    st.caption(f"Device: **{start.device_name}** · path: {start.feature_path} · "
               f"{start.train_size:,} train / {start.val_size:,} validation / {start.test_size:,} test images · "
               f"{trainable_line(start)} · weights: "
               f"{Path(start.weights).name if start.weights else 'random initialisation'}")
    if start.validation:
        st.caption(f"Validation: {start.validation}.")
    else:
        st.caption("An older run: it chose its kept epoch on the test split, so its test figure is optimistic.")
    render_skipped(start, records)
    if info.config is not None and info.config.tuned_by:
        st.caption(f"Settings from a {info.config.tuned_by}.")
    if start.class_weights:
        weights = [f"{c} {w:.2f}" for c, w in zip(start.classes, start.class_weights)]
        st.caption("Class-weighted loss: " + ", ".join(weights[:SHOWN_CLASSES])
                   + (f", and {len(weights) - SHOWN_CLASSES:,} more" if len(weights) > SHOWN_CLASSES else ""))


def _cancel_or_stop(info: RunInfo, run_path: Path) -> None:
    if info.status is RunState.QUEUED:
        if st.button("Cancel", key="tr_cancel", help="Remove this run from the queue before it starts."):
            if not cancel(run_path):
                request_stop(run_path)  # it started in the meantime
            st.rerun()
    elif info.active and st.button("Stop", key="tr_stop", help="Ends training within a couple of seconds, in any "
                                   "phase, then measures the kept epoch once on the test split (with progress); "
                                   "a second Stop skips that test pass."):
        request_stop(run_path)
        st.toast("Stop requested")


def live_view(run_path: Path, was_running: bool) -> None:
    info = read_run(run_path)
    if info.status is RunState.DAMAGED:
        st.error(f"This run is damaged and cannot be followed: {info.reason}")
        return
    records = read_records(run_path)
    head = st.columns([3, 1])
    with head[0]:
        fraction, text = run_progress(records, setup_phase=info.reason)
        if info.active:
            st.progress(fraction, text=f"**{info.status}** · {text}{_time_left(run_path, records)}")
        else:
            st.progress(1.0 if info.status is RunState.COMPLETED else fraction, text=f"**{info.status}**")
        if records.start:
            _run_facts(info, records.start, records)
    with head[1]:
        _cancel_or_stop(info, run_path)
    if info.status is RunState.QUEUED:
        waiting = [r.name for r in queue(list_runs(runs_dir()))]
        position = waiting.index(info.name) + 1 if info.name in waiting else 1
        st.info(f"Queued: position {position} of {len(waiting)}. At most {max_running()} run(s) train at once "
                "(TLD_MAX_RUNNING); it starts as soon as a running one ends.")
    if info.status is RunState.COMPLETED and info.reason:  # it ended early: say why, and which epoch predicts
        st.info(info.reason[:1].upper() + info.reason[1:] + ".")
    if info.status in (RunState.FAILED, RunState.NOT_RESPONDING):
        st.error(f"The run {'failed' if info.status is RunState.FAILED else 'is not responding'}: {info.reason}")
    elif info.status is RunState.STOPPED:
        st.warning(info.reason or "The run was stopped.")
    if info.status in (RunState.STOPPED, RunState.FAILED) and info.has_checkpoint:
        if st.button("Resume", key="tr_resume", help="Continue from the last finished epoch's checkpoint (model, "
                     "optimizer, schedule and random state), in this run folder, as if it had never stopped."):
            with reported():
                resume(run_path, cache_dir())
                st.rerun()
    loss_charts(records)
    if was_running and not info.active:
        st.rerun()  # redraw the whole page once: results appear and the timer stops


@st.cache_data(max_entries=16, show_spinner=False)
def _run_report(path: str, stamp: tuple) -> RunReport:
    """One report per run and state of its files: a click on the page does not recompute it."""
    return run_report(path)


def render_results(run_path: Path, state: Choices) -> None:
    records = read_records(run_path)
    if not records.epochs or records.start is None:
        return
    try:
        report = _run_report(str(run_path), report_stamp(run_path))
    except UserError as exc:
        st.error(f"This run's report cannot be made: {exc}")
        return
    classes = report.classes
    st.subheader(f"Results on the test split (epoch {report.epoch})")
    test = report.test
    chosen = {"validation": "chosen on validation", "last epoch": "the last (no validation split)"}.get(
        report.chosen_on, "chosen on the test split (older run): optimistic")
    st.markdown(f"**Test accuracy {test.text() if test else '–'}** · epoch {report.epoch}"
                f"{stage_label(records, report.epoch)}, {chosen}"
                + (f" · validation accuracy {pct(report.val_accuracy)}" if report.val_accuracy is not None else ""))
    for note in report.notes:
        st.caption(f"Note: {note[:1].upper() + note[1:]}.")
    shown = report.shown_classes()
    if shown.hidden:
        st.caption(shown.note())
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Per-class test accuracy** (recall, with each class's test images)")
        per_class_chart([f"{classes[c]} (n={report.per_class[c].support:,})" for c in shown.indices],
                        [report.per_class[c].recall if report.per_class[c].support else None for c in shown.indices])
        baseline_line(run_path)
        render_most_confused(report)
    with c2:
        st.markdown("**Confusion matrix** (rows: true class, columns: predicted). Click a cell to see its images.")
        event = confusion_chart(classes, report.confusion, key=f"tr_cells_{run_path.name}", shown=shown.indices)
    render_cell(run_path, report, selected_cell(event, len(classes)))
    render_pretrained_vs_scratch(run_path, state)
    _result_tabs(run_path, report, shown.indices)


def _result_tabs(run_path: Path, report: RunReport, shown: list[int]) -> None:
    classes = report.classes
    tabs = st.tabs(["Precision, recall, F1", f"Misclassified ({sum(not i.correct for i in report.images)})",
                    "Top losses", "Least certain", "Calibration", "Test-time augmentation"],
                   key="tr_result_tabs", on_change="rerun")
    with tabs[0]:
        render_scores(report, shown)
    with tabs[1]:
        wrong = [i for i in report.images if not i.correct]
        if not wrong:
            st.caption("None: every test image was classified correctly.")
        gallery(run_path, classes, wrong, "wrong", f"the first {GALLERY_SHOWN} of {len(wrong)} shown")
    with tabs[2]:
        st.caption("The test images the model got most wrong: the highest cross-entropy loss (a low probability for "
                   "the true class). Mislabeled images often show up here.")
        if _needs_logits(report):
            gallery(run_path, classes, report.top_losses, "loss")
    with tabs[3]:
        st.caption("The test images the model was least sure about: the smallest margin between its two most likely "
                   "classes. Good candidates to look at, and to add more of.")
        if _needs_logits(report):
            gallery(run_path, classes, report.least_certain, "margin")
    with tabs[4]:
        render_calibration(report)
    with tabs[5]:
        render_tta(run_path, report)


def _needs_logits(report: RunReport) -> bool:
    if report.calibration is None:
        st.info("This run kept no test logits (a run from before they were kept), so this cannot be shown.")
        return False
    return True


def render_most_confused(report: RunReport) -> None:
    if report.most_confused:
        st.markdown("**Most confused**\n" + "\n".join(f"- {pair.sentence()}" for pair in report.most_confused[:5]))


def render_cell(run_path: Path, report: RunReport, cell: tuple[int, int] | None) -> None:
    """The test images behind the clicked confusion cell."""
    if cell is None:
        return
    t, p = cell
    images = report.cell(t, p)
    what = (f"{report.classes[t]} recognised as {report.classes[t]}" if t == p else
            f"{report.classes[t]} taken for {report.classes[p]}")
    st.markdown(f"**{what}: {len(images)} test image{'s' if len(images) != 1 else ''}**")
    if not images:
        st.caption("No test image in this cell.")
    gallery(run_path, report.classes, images, f"cell{t}_{p}", f"the first {GALLERY_SHOWN} of {len(images)} shown")


def render_scores(report: RunReport, shown: list[int]) -> None:
    rows = [{"class": s.name, "precision": s.precision, "recall": s.recall, "F1": s.f1, "support": s.support}
            for s in [*(report.per_class[c] for c in shown), report.macro, report.weighted]]
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"precision": percent, "recall": percent, "F1": percent})
    st.caption("Precision: of the images called this class, the share that are. Recall: of this class's images, the "
               "share found. F1: their harmonic mean. Support: test images of the class. Macro: the plain mean over "
               "classes; weighted: weighted by support (scikit-learn's figures).")


def render_calibration(report: RunReport) -> None:
    c = report.calibration
    if not _needs_logits(report):
        return
    m1, m2, m3 = st.columns(3)
    m1.metric("ECE, raw", f"{c.ece:.3f}", help="Expected calibration error (15 bins): the average gap between "
              "confidence and accuracy, weighted by the images in each bin. 0 is perfectly calibrated.")
    m2.metric("ECE, temperature-scaled", "n/a" if c.ece_calibrated is None else f"{c.ece_calibrated:.3f}",
              help="Measured on the test images with the temperature prediction uses, fitted on the validation "
                   "images (older runs: cross-fitted on halves of the test images).")
    m3.metric("Temperature", f"{c.temperature:.2f}", help="Logits are divided by it. Above 1: the raw model is "
              "overconfident; below 1: underconfident. It never changes the predicted class.")
    reliability_chart(c.bins, c.bins_calibrated)
    st.caption(f"Measured on {c.images:,} test images. How the temperature is chosen: {c.method}. "
               + (f"The checkpoint prediction uses (epoch {report.temperature_epoch}) keeps temperature "
                  f"{report.temperature:.2f}; the Prediction page and `predict` show calibrated probabilities by "
                  "default." if report.temperature is not None else
                  "This run's checkpoint keeps no temperature: its predictions are raw probabilities."))


def render_tta(run_path: Path, report: RunReport) -> None:
    """Accuracy and ECE with test-time augmentation, measured on request (it runs the model), against the
    report's own figures without it: one ECE and one accuracy for the run on the whole page."""
    st.caption("Test-time augmentation averages the probabilities over several views of each test image. Whether it "
               "helps is measured here on this run's test images, with the checkpoint prediction uses.")
    c1, c2 = st.columns([2, 1])
    mode = c1.selectbox("Views", list(TTA_MODES), format_func=lambda m: f"{m}: {TTA_MODES[m]}", key="tr_tta_mode")
    key = ("tta", str(run_path), mode, report_stamp(run_path))
    was_stopped("tr_tta_running", "measurement")
    if c2.button("Measure", key="tr_tta_go"):
        measured = run_with_stop(evaluate_tta(run_path, mode), key="tr_tta_running", what="measurement",
                                 describe=lambda step: f"Test-time augmentation… {step.done}/{step.total} images")
        if measured is not None:
            st.session_state[key] = measured
    result = st.session_state.get(key)
    if result is None:
        return
    kind = "calibrated" if result.calibrated else "raw"
    c = report.calibration
    accuracy = report.accuracy
    ece = (c.ece_calibrated if result.calibrated else c.ece) if c is not None else result.ece
    m1, m2 = st.columns(2)
    m1.metric("Test accuracy with TTA", pct(result.tta_accuracy), f"{100 * (result.tta_accuracy - accuracy):+.1f} "
              f"points (without: {pct(accuracy)})", delta_color="normal")
    m2.metric(f"ECE with TTA ({kind})", f"{result.tta_ece:.3f}", f"{result.tta_ece - ece:+.3f} (without: "
              f"{ece:.3f}, as on the Calibration tab)", delta_color="inverse")
    st.caption(f"Checkpoint of epoch {result.epoch}, {result.images} test images, {result.seconds:.1f} s"
               + (f"; {result.unreadable} could not be read" if result.unreadable else "")
               + (f"; {result.note}" if result.note else "") + ".")


GALLERY_COLUMNS = 6
GALLERY_SHOWN = 24


def gallery(run_path: Path, classes: list[str], images: list[TestImage], key: str, more: str = "") -> None:
    """Test images in a grid that lines up, each with true → predicted class and probability; "Why?" under one
    opens where the model looked, for the true and the predicted class, beside that image."""
    shown = [(i, image) for i in images[:2 * GALLERY_SHOWN]
             if (image := thumbnail(i.path, 320, square=True)) is not None][:GALLERY_SHOWN]
    if len(images) > len(shown) and more:
        st.caption(more)
    for row in range(0, len(shown), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)  # one row at a time: every row starts level
        for column, (i, image) in zip(columns, shown[row:row + GALLERY_COLUMNS]):
            column.image(image, width="stretch")
            if column.button("Why?", key=f"tr_why_{key}_{i.index}", width="stretch",
                             help="Grad-CAM for the true and the predicted class"):
                why_dialog(run_path, classes, i)
            column.caption(f"{classes[i.label]} → {classes[i.pred]} ({pct(i.prob)})"
                           + (f" · loss {i.loss:.2f}" if key == "loss" and i.loss is not None else "")
                           + (f" · margin {i.margin:.2f}" if key == "margin" and i.margin is not None else ""))


@st.dialog("Why did the model say that?", width="large")
def why_dialog(run_path: Path, classes: list[str], picked: TestImage) -> None:
    try:
        predictor = run_predictor(run_path)
    except (UserError, OSError) as exc:  # a checkpoint damaged or replaced meanwhile: the rest of the page stays
        st.error(f"This run's model cannot be loaded to explain the image: {exc}")
        return
    st.markdown(f"**{Path(picked.path).name}**, a {classes[picked.label]}, was called "
                f"**{classes[picked.pred]}** ({pct(picked.prob)}). Grad-CAM of the checkpoint of epoch "
                f"{predictor.epoch}, on the image as the model saw it: red is where the evidence lies.")
    left, right = st.columns(2)
    left.caption(f"Evidence for the true class: {classes[picked.label]}")
    show_explanation(predictor, picked.path, picked.label, picked.path, left)
    right.caption(f"Evidence for the predicted class: {classes[picked.pred]}")
    show_explanation(predictor, picked.path, picked.pred, picked.path, right)


def baseline_line(run_path: Path) -> None:
    """The data check's baseline beside the run's accuracy, when the run's images were checked."""
    report = check_of_run(run_path, checks_dir())
    if report is None or report.baseline is None:
        return
    b = report.baseline
    st.caption(f"Data check's baseline for these images: a linear head on the {report.arch} features reaches "
               f"{pct(b.accuracy)} ± {100 * b.std:.1f} points ({b.folds}-fold cross-validation on the "
               f"{b.images:,} training and validation images, test labels never read; k-NN "
               f"{pct(b.knn_accuracy)}). A head-only run should land near it.")


def render_pretrained_vs_scratch(run_path: Path, state: Choices) -> None:
    """The recipe's claim checked on this data: this run beside its twin (same settings, the other
    weights), or one click to train that twin."""
    cfg = load_config(RunDir(run_path))
    weights = resolve_weights_file(cfg.arch, replace(state, weights_mode=PRETRAINED))
    twin = find_twin(cfg, list_runs(runs_dir()), weights)
    if twin is not None:
        st.fragment(pair_view, run_every=LIST_EVERY_S if twin.active else None)(run_path, twin.path, twin.active)
        if twin.active or twin.status is RunState.COMPLETED:
            return
    twin_cfg = comparison_twin(cfg, weights)
    if twin_cfg is None:
        st.caption("No pretrained weights for this architecture are on this machine, so there is no pretrained "
                   "run to compare with (add weights on the Model surgery page).")
        return
    text = ("Train the same from scratch (every layer) to compare" if cfg.pretrained
            else "Train the same with pretrained weights (head only) to compare")
    if twin is not None:  # it stopped or failed: its partial curves are above, and it can be trained again
        text = f"Train the {'from-scratch' if cfg.pretrained else 'pretrained'} twin again (the last one {twin.status})"
    if st.button(text, key="tr_twin"):
        with user_errors():
            path = launch(twin_cfg)
        st.query_params["run"] = path.name
        st.rerun()


def _trains(info) -> str:
    return info.config.what_trains




def pair_view(run_path: Path, twin_path: Path, twin_was_active: bool) -> None:
    """Both sides' test curves, pretrained first; redrawn while the twin trains."""
    this, twin = read_run(run_path), read_run(twin_path)
    if this.config is None or twin.config is None:
        st.caption("The pretrained-vs-scratch comparison is not shown: one of the two runs is damaged.")
        return
    pretrained, scratch = (this, twin) if this.config.pretrained else (twin, this)
    st.subheader("Pretrained vs from scratch")
    st.markdown(f"Same data, split, seed and settings. Test accuracy: pretrained ({_trains(pretrained)}) "
                f"**{test_cell(pretrained)}** ({pretrained.status}); from scratch ({_trains(scratch)}) "
                f"**{test_cell(scratch)}** ({scratch.status}).")
    if pretrained.status is scratch.status is RunState.COMPLETED:
        comparison = compare_runs(pretrained.path, scratch.path)
        st.markdown(f"Pretraining's gain, paired on the same test images: {comparison.difference.text()}."
                    if comparison.difference else comparison.text("pretrained", "from scratch"))
    compare_chart([pretrained, scratch])
    if twin_was_active and not twin.active:
        st.rerun()  # the twin just ended: redraw once with its final numbers and stop refreshing


def runs_panel(shown: str | None) -> None:
    """Runs table, follow box and comparison: redrawn every LIST_EVERY_S, so runs started in another
    tab or from the command line appear, and running runs' numbers and curves stay current."""
    if dispatch(runs_dir(), cache_dir()):  # a slot came free: start the next queued run
        st.rerun(scope="app")
    runs = list_runs(runs_dir())
    if not runs:
        st.caption("Runs appear here once started (from this page, another tab, or `python -m core train`).")
        return
    active = [r for r in runs if r.active]
    if active:
        waiting = [r.name for r in queue(runs)]
        st.caption("Running now: " + "; ".join(
            f"{r.name} ({r.status}" + (f" {waiting.index(r.name) + 1}" if r.name in waiting else "")
            + f", {r.epochs_done}/{r.config.total_epochs if r.config else '?'} epochs)" for r in active))
    runs_table(runs)
    names = [r.name for r in runs]
    # The box names the run shown above. It is a new widget for each shown run, not one whose value the
    # script sets: a browser rerun sent before the new value arrived would set the old run back.
    follow = st.selectbox("Follow a run", names, index=names.index(shown) if shown in names else 0,
                          key=f"tr_follow_{shown}",
                          format_func=lambda n: next(f"{r.label} · {r.status} · test {test_cell(r)}"
                                                     for r in runs if r.name == n))
    if (shown is not None and follow != shown) or (shown is None and st.button("Follow", key="tr_follow_btn")):
        st.query_params["run"] = follow
        st.rerun(scope="app")
    by_name = {r.name: r for r in runs}
    kept = [n for n in st.session_state.get("tr_compare", []) if n in by_name]
    if kept != st.session_state.get("tr_compare", []):  # a run deleted meanwhile; else leave the widget's own value
        st.session_state["tr_compare"] = kept
    picked = st.multiselect("Compare runs (overlay their validation curves, then their test figures; running runs "
                            "included)", names,
                            key="tr_compare", format_func=lambda n: by_name[n].label)
    compare_chart([by_name[n] for n in picked])


def main() -> None:
    st.title("4 · Training")
    st.caption("Cross-entropy with AdamW or SGD, in a background process. Reruns, page switches, reloads and closed "
               "tabs do not stop it; runs started from the command line show up here too.")
    state = load_state()
    with st.expander("Settings", expanded=not st.query_params.get("run")):
        cfg = render_settings(state, default_arch())
        with user_errors():
            st.caption(f"Data: `{cfg.data_root}` · {split_line(split_summary(cfg.data_root, state)['summary'])}")
        with st.container(border=True):
            render_lr_finder(cfg)
        with st.container(border=True):
            render_head_search(cfg)
        if st.button("Start training", type="primary", key="tr_start"):
            start(cfg)

    st.divider()
    run_path = followed_run()
    if run_path is None:
        st.info("No run is being followed. Press **Start training** above, or pick a run below.")
    else:
        info = read_run(run_path)
        st.subheader(f"Run {run_path.name}")
        st.fragment(live_view, run_every=LIVE_EVERY_S if info.active else None)(run_path, info.active)
        if info.finished and info.status is not RunState.DAMAGED:
            try:
                render_results(run_path, state)
            except UserError as exc:
                st.error(f"This run's results cannot be shown: {exc}")

    st.divider()
    st.subheader("All runs")
    st.fragment(runs_panel, run_every=LIST_EVERY_S)(run_path.name if run_path else None)


main()
