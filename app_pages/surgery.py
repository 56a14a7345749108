import difflib
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages.architectures import render_architecture_table
from app_pages.charts import download_progress, highlighted_lines
from app_pages.choices import data_root, default_arch, load_state, resolve_weights_file, save_state, split_summary
from app_pages.work import reported, user_errors
from core.models.surgery import SurgeryReport, adapt_model, trains_in
from core.models.weights import NO_WEIGHTS, PRETRAINED, download_weights, list_sources, store_uploaded_weights
from core.platform.workspace import allowed_roots, is_allowed, path_problem, shown
from core.spec.archs import ARCHITECTURES, get_arch
from core.spec.config import FREEZE_MODES, TRAINS, Choices

WEIGHT_MODES = {PRETRAINED: "Pretrained (ImageNet)", NO_WEIGHTS: "From scratch (random)"}


def render_choices(state: Choices) -> dict:
    """Architecture, head, freeze mode and weights: this visitor's choices, shared with the Training page."""
    names = list(ARCHITECTURES)
    with st.expander("Compare the architectures", expanded=False):
        render_architecture_table(default_arch())
    c1, c2, c3 = st.columns([1.5, 1, 1])  # the Architecture box wide enough for its label at 1280 px
    if st.session_state.get("sg_arch") not in names:  # first drawn this visit: this visitor's saved choice
        st.session_state["sg_arch"] = default_arch()
    arch = c1.selectbox("Architecture", names, key="sg_arch", format_func=_arch_label)
    spec = ARCHITECTURES[arch]
    variants = [v.name for v in spec.variants]
    head_variant = c2.selectbox("Head", variants, key="sg_variant",
                                index=variants.index(state.head_variant) if state.head_variant in variants
                                else 0, format_func=lambda v: spec.variant(v).description,
                                disabled=len(variants) == 1)
    freeze = c3.radio("Fine-tune mode", list(FREEZE_MODES), index=list(FREEZE_MODES).index(state.freeze),
                      key="sg_freeze", format_func=lambda m: FREEZE_MODES[m])
    mode = st.radio("Weights", list(WEIGHT_MODES), horizontal=True, key="sg_mode",
                    index=list(WEIGHT_MODES).index(state.weights_mode), format_func=WEIGHT_MODES.get)
    weights_file = render_weights_manager(arch, state) if mode == PRETRAINED else state.weights_file
    chosen = dict(arch=arch, head_variant=head_variant, freeze=freeze, weights_mode=mode,
                  weights_file=weights_file or "")
    return save_state(**chosen) if any(getattr(state, k) != v for k, v in chosen.items()) else state


def _arch_label(name: str) -> str:
    spec = ARCHITECTURES[name]
    # The chooser's key figure first, so a narrow box cuts the least important part.
    top1 = f" · top-1 {spec.imagenet_top1:.1f}%" if spec.imagenet_top1 else ""
    return f"{name}{top1} · {spec.num_params / 1e6:.1f}M params · {spec.input_size}px"


def _confined_weights_file(typed: str) -> str:
    if typed and path_problem(typed):
        st.error(f"'{shown(typed)}' is not a usable path: {path_problem(typed)}.")
        return ""
    if typed and not is_allowed(typed):
        # Same answer whether or not the file exists: the box must not reveal the server's files.
        st.error(f"'{shown(typed)}' is outside the folders this app may read "
                 f"({', '.join(map(str, allowed_roots()))}); use a file inside them, or upload it below.")
        return ""
    return typed


def render_weights_manager(arch: str, state: Choices) -> str:
    spec = ARCHITECTURES[arch]
    st.subheader("Where the weights come from")
    weights_file = _confined_weights_file(st.text_input(
        "A weights file on this machine (optional)", value=state.weights_file, key="sg_file",
        placeholder="e.g. /data/resnet18_pretrain.pth",
        help="Tried first. A state dict saved with torch.save(model.state_dict(), …)."))
    sources = list_sources(spec, weights_file or None)
    chosen = next((s for s in sources if s.available), None)
    st.dataframe(pd.DataFrame([{"order": i + 1, "source": s.kind, "where": s.path or "", "status":
                                ("in use" if s is chosen else "available") if s.available else s.detail}
                               for i, s in enumerate(sources)]), hide_index=True, width="stretch",
                 column_config={"where": st.column_config.TextColumn(width="large")})
    if chosen is None:
        render_no_weights(arch, sources)
    render_add_weights(spec)
    return weights_file


def render_no_weights(arch: str, sources) -> None:
    """Where we looked, and a one-click switch to an architecture whose weights ship with the app."""
    from core.models.arch_choice import offline_choices, places_looked

    looked = places_looked(sources)
    offline = offline_choices()
    places = ", ".join(f"`{p}`" for p in looked) or "nowhere"
    st.warning(f"No {arch} weights are on this machine (looked in: {places}). "
               "Upload the file, download it (needs network)"
               + (f", or switch to one whose ImageNet weights ship with the app: {', '.join(offline)}." if offline
                  else "."))
    if offline and arch not in offline:
        pick = st.selectbox("Offline architecture", offline, key="sg_offline_pick")
        st.button(f"Use {pick} instead", key="sg_use_lite", on_click=_use_architecture, args=(pick,))


def _use_architecture(name: str) -> None:
    """The switch button's callback: it runs before the next script run draws the Architecture box, which is
    when Streamlit lets a widget's value be set (so the box shows it, and every later rerun keeps it)."""
    save_state(arch=name, head_variant=None)
    st.session_state["sg_arch"] = name


def render_add_weights(spec) -> None:
    with st.expander("Add weights: upload or download"):
        upload = st.file_uploader(f"Upload a {spec.name} state-dict file (.pth / .pt)", type=["pth", "pt"],
                                  key="sg_upload")
        if upload is not None and st.button("Check and store in the cache", key="sg_store"):
            with user_errors(), st.spinner("Checking the file fits the architecture…"):
                stored = store_uploaded_weights(spec, upload.getvalue(), upload.name)
            st.success(f"Stored as `{stored}`.")
            st.rerun()
        if spec.download_url:
            if st.button(f"Download from {spec.download_url}", key="sg_download"):
                path, bar = None, download_progress()
                with reported(bar):
                    path = download_weights(spec, progress=bar)
                if path is not None:
                    st.success(f"Downloaded to `{path}`.")
                    st.rerun()
        elif spec.packaged:
            st.caption(f"{spec.name}'s weights come from the pip package {spec.packaged.package}.")


def _stamp(path):
    return Path(path).stat().st_mtime if path else None


@st.cache_data(max_entries=16, show_spinner="Performing surgery…")
def surgery_report(arch, n, weights, stamp, head_variant, freeze) -> SurgeryReport:
    _, report = adapt_model(arch, n, weights=weights, head_variant=head_variant, freeze=freeze, seed=0)
    return report


def key_block(title: str, keys: list[str], explanation: str) -> None:
    st.markdown(f"**{title}** ({len(keys)}): {explanation}")
    st.code("\n".join(keys) if keys else "(none)", language=None)


def render_report(report: SurgeryReport, num_classes: int) -> None:
    pretrained = report.pretrained
    st.subheader(f"Result for {num_classes} classes"
                 + ("" if pretrained else ": every layer starts from random weights"))
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Head", report.head_name)
    m2.metric("Keys loaded from the file", report.loaded_keys if pretrained else "none: no file")
    m3.metric("Trainable parameters", f"{report.trainable_count:,}")
    m4.metric("Frozen parameters", f"{report.frozen_count:,}")
    st.markdown(f"**Head change:** `{report.head_name}`: `{report.head_before}` → {report.head_kind} by "
                f"`{report.head_after}`")
    st.caption(f"Weights: `{report.weights_source}`")
    for note in report.notes:
        st.info(note)
    k1, k2 = st.columns(2)
    with k1:
        key_block("Popped", report.popped_keys, "the original head's tensors, removed from the file's state dict")
        key_block("Dropped", report.dropped_keys, "keys in the file that the model does not have")
    with k2:
        missing = report.missing_keys
        key_block("Missing", missing[:50] + (["…"] if len(missing) > 50 else []),
                  "model tensors the file did not provide (expected for a new head)" if pretrained else
                  "every tensor of the model: with no weights file, all start from random initialisation")
        key_block("Unexpected", report.unexpected_keys, "reported by load_state_dict")


def render_architectures(report: SurgeryReport, num_classes: int) -> None:
    st.subheader("Architecture before and after")
    before, after = report.architecture_before.splitlines(), report.architecture_after.splitlines()
    removed, added = set(), set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag != "equal":
            removed.update(range(i1, i2))
            added.update(range(j1, j2))
    changes = [f"- {before[i]}" for i in sorted(removed)] + [f"+ {after[j]}" for j in sorted(added)]
    st.markdown("**What changed**")
    st.code("\n".join(changes) or "(nothing)", language="diff")
    a1, a2 = st.columns(2)
    with a1:
        st.markdown("**Before** (ImageNet, 1000 classes)")
        st.html(highlighted_lines(before, removed, "#ffd6d6"))
    with a2:
        st.markdown(f"**After** ({num_classes} classes)")
        st.html(highlighted_lines(after, added, "#d4f7d4"))


def render_parameters(report: SurgeryReport) -> None:
    st.subheader("Parameters")
    params = pd.DataFrame(report.parameters)
    params["shape"] = params["shape"].map(lambda s: "×".join(map(str, s)))
    params["status"] = params["trainable"].map({True: "trainable", False: "frozen"})
    totals = params.groupby("status")["numel"].agg(["count", "sum"]).rename(
        columns={"count": "tensors", "sum": "parameters"})
    counts = st.column_config.NumberColumn(format="localized")  # 3,371,008 as in the figures above
    st.dataframe(totals, width="content", column_config={"tensors": counts, "parameters": counts})
    st.caption("The ✓ columns: which tensors train in each fine-tune mode (the chosen one is the status column).")
    modes = {f"trains when {TRAINS[mode]}": mode for mode in FREEZE_MODES}
    for column, mode in modes.items():
        params[column] = params["name"].map(lambda n, m=mode: "✓" if trains_in(report.modes[m], n) else "")
    st.dataframe(pd.DataFrame({column: [int(params.loc[params[column] == "✓", "numel"].sum())]
                               for column in modes}, index=["trainable parameters"]), width="content",
                 column_config={column: counts for column in modes})
    render_stages(report, params, modes)
    show = st.radio("Show", ["trainable", "frozen", "all"], horizontal=True, key="sg_show")
    view = params if show == "all" else params[params["status"] == show]
    st.dataframe(view[["name", "shape", "numel", "status", *modes]], hide_index=True, width="stretch",
                 column_config={"numel": counts},
                 height=min(320, 35 * (len(view) + 1) + 3))


def render_stages(report: SurgeryReport, params: pd.DataFrame, modes: dict[str, str]) -> None:
    """What each stage of the staged fine-tune trains, and on what (its ✓ columns are the modes' own)."""
    cut = get_arch(report.arch).cut
    counts = {mode: int(params.loc[params[column] == "✓", "numel"].sum()) for column, mode in modes.items()}
    rows = [{"stage": 1, "trains": TRAINS["head"], "trained on": "cached features (the head's input)",
             "trainable parameters": counts["head"]},
            {"stage": 2, "trains": TRAINS["last_block"], "trained on": f"cached activations at {cut}'s input, "
             "one-cycle, the body at the body learning rate", "trainable parameters": counts["last_block"]}]
    st.markdown("**The staged fine-tune** (the Training page's recipe): what each stage trains")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"trainable parameters": st.column_config.NumberColumn(format="localized")})


def main() -> None:
    st.title("3 · Model surgery")
    st.caption("Swap the ImageNet head for one with N outputs, load pretrained weights, freeze the body.")
    state = load_state()
    with user_errors():
        classes = split_summary(data_root(), state)["summary"]["classes"]
    state = render_choices(state)
    weights = resolve_weights_file(state.arch, state)
    if state.weights_mode == PRETRAINED and weights is None:
        st.warning(f"Pretrained was chosen, but no {state.arch} weights are on this machine: the result below, "
                   "and a run started now, begin from random weights. Add weights above, or pick "
                   "one whose weights ship with the app (efficientnet_lite0, _lite1, _lite2).")
    with user_errors():
        report = surgery_report(state.arch, len(classes), weights, _stamp(weights), state.head_variant,
                                state.freeze)
    render_report(report, len(classes))
    render_architectures(report, len(classes))
    render_parameters(report)
    st.page_link("app_pages/training.py", label="Next: train this model", icon=":material/monitoring:")


main()
