"""Predict: try a trained model on new images, the camera, or a whole folder/zip (CSV out)."""

from __future__ import annotations

import io

import pandas as pd
import streamlit as st

from finetune_core.data.images import ImageReadError, open_rgb
from finetune_core.evaluation.predict import (
    Prediction,
    explain_image,
    predict_files,
    predictions_csv,
)
from finetune_core.runs import RunError
from finetune_core.store import RunStatus
from ui.components import error_box, esc, paginate, pick_run
from ui.services import get_workspace, load_model

ws = get_workspace()
IMAGE_TYPES = ["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"]
PER_PAGE = 8
TOP_K = 5

st.title("Predict")

candidates = [
    r
    for r in ws.list_runs()
    if r.status not in RunStatus.ACTIVE and (ws.run_dir(r.id) / "checkpoints" / "best.pt").exists()
]
if not candidates:
    st.info("No trained model yet. Train one first; it appears here when it has saved a model.",
            icon=":material/info:")  # fmt: skip
    st.page_link("views/setup.py", label="Set up a run", icon=":material/tune:")
    st.stop()

run = pick_run(candidates, key="predict_run", label="Model (run)")
assert run is not None
try:
    model = load_model(ws.run_dir(run.id))
except RunError as exc:
    error_box(str(exc), exc)
    st.stop()
except Exception as exc:
    error_box(f"The model could not be loaded: {exc}", exc)
    st.stop()

st.caption(
    f"{run.model} · {len(model.class_names)} classes · input {model.image_size} px · "
    f"validation accuracy "
    f"{f'{run.best_val_accuracy:.1%}' if run.best_val_accuracy is not None else '–'}"
)
explain = st.toggle(
    "Show activation maps",
    key="predict_explain",
    help="Grad-CAM: the regions of the image that drove the prediction.",
)


@st.cache_data(max_entries=64, show_spinner=False)
def activation_map(run_id: str, data: bytes) -> tuple[bytes, str]:
    result = explain_image(model, open_rgb(data))
    buffer = io.BytesIO()
    result.overlay.save(buffer, "PNG")
    return buffer.getvalue(), result.note


def show_prediction(prediction: Prediction, data: bytes) -> None:
    with st.container(border=True):
        cols = st.columns([1, 1, 2] if explain else [1, 2], gap="medium")
        cols[0].image(data, caption=esc(prediction.name), width="stretch")
        if prediction.error:
            cols[-1].error(f"Cannot read this image: {prediction.error}")
            return
        if explain:
            try:
                overlay, note = activation_map(run.id, data)
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
                column_config={
                    "Probability": st.column_config.ProgressColumn(
                        min_value=0.0, max_value=1.0, format="percent"
                    )
                },
            )


def predict_and_show(files: list[tuple[str, bytes]], page_key: str) -> None:
    page = paginate(len(files), PER_PAGE, key=page_key)
    shown = files[page]
    results = predict_files(model, shown, k=TOP_K)
    data_by_name = dict(shown)
    for prediction in results:
        show_prediction(prediction, data_by_name.get(prediction.name, b""))


tab_images, tab_camera, tab_batch = st.tabs(["Images", "Camera", "Folder or zip → CSV"])

with tab_images:
    uploads = st.file_uploader(
        "Images to classify", type=IMAGE_TYPES, accept_multiple_files=True, key="predict_images"
    )
    if uploads:
        predict_and_show([(u.name, u.getvalue()) for u in uploads], "predict_page")
    else:
        st.caption("Drop one or more images; each gets the model's top classes.")

with tab_camera:
    shot = st.camera_input("Take a picture", key="predict_camera")
    if shot is not None:
        data = shot.getvalue()
        try:
            open_rgb(data)
        except ImageReadError as exc:
            st.error(f"The picture cannot be read: {exc.reason}")
        else:
            show_prediction(predict_files(model, [("camera.jpg", data)], k=TOP_K)[0], data)

with tab_batch:
    st.markdown(
        "Classify many images at once and download the predictions as a CSV (one row per "
        "image with every class probability)."
    )
    mode = st.segmented_control(
        "Input", ["Zip or files", "Folder"], default="Zip or files", key="batch_mode"
    )
    if mode == "Folder":
        batch = st.file_uploader("Folder of images", accept_multiple_files="directory",
                                 key="batch_folder")  # fmt: skip
    else:
        batch = st.file_uploader("A zip of images, or many images", type=["zip", *IMAGE_TYPES],
                                 accept_multiple_files=True, key="batch_files")  # fmt: skip
    if st.button("Predict all", type="primary", icon=":material/play_arrow:", key="batch_go",
                 disabled=not batch):  # fmt: skip
        bar = st.progress(0.0, text="Reading the images")

        def on_progress(done: int, total: int) -> None:
            bar.progress(done / total if total else 1.0, text=f"{done:,} of {total:,} images")

        try:
            results = predict_files(model, [(f.name, f.getvalue()) for f in batch], k=TOP_K,
                                    progress=on_progress)  # fmt: skip
        except Exception as exc:  # a broken zip, mostly
            error_box(f"The images could not be read: {exc}", exc)
        else:
            st.session_state["batch_results"] = {"run": run.id, "results": results}
        bar.empty()
    stored = st.session_state.get("batch_results")
    if stored and stored["run"] == run.id:
        results: list[Prediction] = stored["results"]
        if not results:
            st.warning("No images were found in the upload.")
        else:
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
                    }  # fmt: skip
                    for r in results
                ]
            )
            st.dataframe(
                table,
                hide_index=True,
                width="stretch",
                column_config={
                    "Probability": st.column_config.ProgressColumn(
                        min_value=0.0, max_value=1.0, format="percent"
                    )
                },
            )
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
