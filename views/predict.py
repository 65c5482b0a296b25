"""Predict: try a trained model on new images, the camera, or a whole folder/zip (CSV out)."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from finetune_core.data.errors import IngestError
from finetune_core.data.images import UPLOAD_TYPES, ImageReadError, open_rgb
from finetune_core.evaluation.predict import (
    Prediction,
    explain_image,
    predict_files,
    predictions_csv,
)
from finetune_core.models.loaded import LoadedModel
from finetune_core.runs import RunError
from finetune_core.store import RunRecord
from ui.components import error_box, esc, paginate, pick_run
from ui.services import finished_runs_with_model, get_workspace, load_model, public, val_accuracy

ws = get_workspace()
IMAGE_TYPES = UPLOAD_TYPES
PER_PAGE = 8
TOP_K = 5
PROBABILITY = st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent")


def pick_model_run() -> RunRecord:
    """The run whose model predicts (the page stops when no run has one)."""
    candidates = finished_runs_with_model()
    if not candidates:
        st.info("No trained model yet. Train one first; it appears here when it has saved a "
                "model.", icon=":material/info:")  # fmt: skip
        st.page_link("views/setup.py", label="Set up a run", icon=":material/tune:")
        st.stop()
    run = pick_run(candidates, key="predict_run", label="Model (run)")
    assert run is not None
    return run


def model_of(run: RunRecord) -> LoadedModel:
    """The run's best model (the page stops with the reason when it cannot load)."""
    try:
        return load_model(ws.run_dir(run.id))
    except RunError as exc:
        error_box(str(exc), exc)
    except Exception as exc:
        error_box(f"The model could not be loaded: {exc}", exc)
    st.stop()


def model_caption(run: RunRecord, model: LoadedModel) -> None:
    value = val_accuracy(run)
    accuracy = f"{value:.1%}" if value is not None else "–"
    st.caption(
        f"{run.model} · {len(model.class_names)} classes · input {model.image_size} px · "
        f"validation accuracy {accuracy}"
    )


@st.cache_data(max_entries=64, show_spinner=False)
def activation_map(run_id: str, data: bytes, _model: LoadedModel) -> tuple[bytes, str]:
    """Activation-map overlay PNG and its note, which names the method (cached per run and
    image; the model is not hashed)."""
    # The bytes, not a decoded image: the same preprocessing as the top-k, so the map
    # explains exactly the tensor that was classified.
    result = explain_image(_model, data)
    buffer = io.BytesIO()
    result.overlay.save(buffer, "PNG")
    return buffer.getvalue(), result.note


def show_prediction(
    prediction: Prediction, data: bytes, run: RunRecord, model: LoadedModel, explain: bool
) -> None:
    with st.container(border=True):
        cols = st.columns([1, 1, 2] if explain else [1, 2], gap="medium")
        cols[0].image(data, caption=esc(prediction.name), width="stretch")
        if prediction.error:
            cols[-1].error(f"Cannot read this image: {prediction.error}")
            return
        if explain:
            try:
                overlay, note = activation_map(run.id, data, model)
            except Exception as exc:
                with cols[1]:
                    error_box(f"No activation map: {exc}", exc)
            else:
                cols[1].image(overlay, caption=esc(note), width="stretch")
        with cols[-1]:
            label, confidence = prediction.top[0]
            st.markdown(f"**{esc(label)}** · {confidence:.1%}")
            st.dataframe(
                pd.DataFrame(prediction.top, columns=["Class", "Probability"]),
                hide_index=True,
                width="stretch",
                column_config={"Probability": PROBABILITY},
            )


def images_tab(run: RunRecord, model: LoadedModel, explain: bool) -> None:
    uploads = st.file_uploader(
        "Images to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="predict_images"
    )
    if not uploads:
        st.caption("Drop one or more images; each gets the model's top classes.")
        return
    files = [(u.name, u.getvalue()) for u in uploads]
    shown = files[paginate(len(files), PER_PAGE, key="predict_page")]
    data_by_name = dict(shown)
    for prediction in predict_files(model, shown, k=TOP_K):
        show_prediction(prediction, data_by_name.get(prediction.name, b""), run, model, explain)


def camera_tab(run: RunRecord, model: LoadedModel, explain: bool) -> None:
    shot = st.camera_input("Take a picture", key="predict_camera")
    if shot is None:
        return
    data = shot.getvalue()
    try:
        open_rgb(data)
    except ImageReadError as exc:
        st.error(f"The picture cannot be read: {exc.reason}")
        return
    prediction = predict_files(model, [("camera.jpg", data)], k=TOP_K)[0]
    show_prediction(prediction, data, run, model, explain)


def batch_upload() -> list:
    """The uploaded folder, zip or images of a batch (empty before an upload)."""
    mode = st.segmented_control(
        "Input", ["Zip or files", "Folder"], default="Zip or files", key="batch_mode"
    )
    if mode == "Folder":
        return st.file_uploader("Folder of images", accept_multiple_files="directory",
                                key="batch_folder") or []  # fmt: skip
    return st.file_uploader("A zip of images, or many images", type=["zip", *IMAGE_TYPES],
                            accept_multiple_files=True, key="batch_files") or []  # fmt: skip


def run_batch(run: RunRecord, model: LoadedModel, batch: list) -> None:
    bar = st.progress(0.0, text="Reading the images")

    def on_progress(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"{done:,} of {total:,} images")

    try:  # zip entries stream through files in the workspace's tmp/, one at a time
        results = predict_files(model, [(f.name, f.getvalue()) for f in batch], k=TOP_K,
                                progress=on_progress, tmp_dir=ws.tmp_dir)  # fmt: skip
    except IngestError as exc:  # a zip over a limit, damaged or unsafe: the reason is enough
        st.error(esc(public(str(exc))), icon=":material/error:")
    except Exception as exc:
        error_box(f"The images could not be read: {exc}", exc)
    else:
        st.session_state["batch_results"] = {"run": run.id, "results": results}
    bar.empty()


def batch_results(run: RunRecord, model: LoadedModel, results: list[Prediction]) -> None:
    if not results:
        st.warning("No images were found in the upload.")
        return
    failed = sum(1 for r in results if r.error)
    st.success(
        f"{len(results) - failed:,} image(s) classified"
        + (f", {failed} could not be read" if failed else "")
        + ".",
        icon=":material/check_circle:",
    )
    table = pd.DataFrame(
        [
            {
                "File": r.name,
                "Prediction": r.label or "–",
                "Probability": r.confidence,
                "Error": r.error,
            }
            for r in results
        ]  # fmt: skip
    )
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"Probability": PROBABILITY})  # fmt: skip
    counts = table[table["Error"] == ""]["Prediction"].value_counts()
    st.caption("Predicted: " + ", ".join(f"{esc(k)} {v}" for k, v in counts.items()))
    st.download_button(
        "Download predictions (CSV)",
        predictions_csv(results, model.class_names),
        file_name=f"predictions-{run.id}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        key="batch_download",
    )


def batch_tab(run: RunRecord, model: LoadedModel) -> None:
    st.markdown(
        "Classify many images at once and download the predictions as a CSV (one row per "
        "image with every class probability)."
    )
    batch = batch_upload()
    if st.button("Predict all", type="primary", icon=":material/play_arrow:", key="batch_go",
                 disabled=not batch):  # fmt: skip
        run_batch(run, model, batch)
    stored = st.session_state.get("batch_results")
    if stored and stored["run"] == run.id:
        batch_results(run, model, stored["results"])


def main() -> None:
    st.title("Predict")
    run = pick_model_run()
    model = model_of(run)
    model_caption(run, model)
    explain = st.toggle(
        "Show activation maps",
        key="predict_explain",
        help="The regions of the image that drove the prediction: Grad-CAM, or input-gradient "
        "saliency where Grad-CAM cannot run (each map's caption says which).",
    )
    tab_images, tab_camera, tab_batch = st.tabs(["Images", "Camera", "Folder or zip → CSV"])
    with tab_images:
        images_tab(run, model, explain)
    with tab_camera:
        camera_tab(run, model, explain)
    with tab_batch:
        batch_tab(run, model)


main()
