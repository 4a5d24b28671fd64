"""The review app's page: a case bar, a side panel (cases, detection, landmarks, export), the views.

Only bundled assets are used (Vuetify and its icon font come with trame; the favicon is inline),
so the page loads without internet access. Elements the end-to-end test drives carry ``id``s.
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v

from .controller import ReviewController

FAVICON = (
    "data:image/svg+xml,"
    "%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Ccircle cx='8' cy='8' r='6' fill='none' stroke='%2304a94d' stroke-width='2'/%3E"
    "%3Ccircle cx='8' cy='8' r='2' fill='%2304a94d'/%3E%3C/svg%3E"
)
TITLE = "H3DE Landmarks review"
STATUS_COLORS = (
    "{'predicted': 'green', 'moved': 'blue', 'placed by hand': 'purple', "
    "'marked absent': 'red', 'absent': 'grey'}[row.status]"
)
UPLOAD_SIZE = "Array.from($event.target.files || []).reduce((total, file) => total + file.size, 0)"
# Files over the server's limit are not sent at all (the server would close the connection).
UPLOAD_OR_REFUSE = (
    f"max_upload_bytes && {UPLOAD_SIZE} > max_upload_bytes ? trigger('h3de_upload_refused', [{UPLOAD_SIZE}])"
    " : trigger('h3de_upload', [$event.target.files])"
)
PAGE_STYLE = """
html { overflow-y: hidden; }
.h3de-landmarks tr { cursor: pointer; }
.h3de-landmarks tr.h3de-active { background: rgba(4, 169, 77, 0.18); }
"""


def build_page(server, controller: ReviewController, layout_manager) -> VAppLayout:
    """The whole page; `layout_manager` fills the main area with the Slicer views."""
    server.state.trame__title = TITLE
    server.state.trame__favicon = FAVICON
    for name, action in (
        ("h3de_next", controller.next_case),
        ("h3de_previous", controller.previous_case),
        ("h3de_open", controller.open_case),
        ("h3de_detect", controller.start_detection),
        ("h3de_cancel", controller.cancel_detection),
        ("h3de_jump", controller.jump),
        ("h3de_next_flagged", controller.next_flagged),
        ("h3de_place", controller.place),
        ("h3de_stop_placing", controller.stop_placing),
        ("h3de_mark_absent", controller.mark_absent),
        ("h3de_save", controller.save),
        ("h3de_keep_saved", controller.keep_saved_review),
        ("h3de_upload", controller.upload),
        ("h3de_upload_refused", controller.upload_refused),
        ("h3de_model", controller.choose_model),
        ("h3de_download", controller.download),
    ):
        server.trigger(name)(action)

    with VAppLayout(server, full_height=True) as layout:
        layout.root.theme = "dark"
        client.Style(PAGE_STYLE)
        _app_bar()
        with v.VNavigationDrawer(permanent=True, width=430, location="left"), html.Div(
            classes="d-flex flex-column", style="height: 100%;"
        ):
            _cases_panel()
            v.VDivider()
            _detection_panel()
            v.VDivider()
            _landmarks_panel()
            v.VDivider()
            _export_panel()
        _replace_dialog()
        with v.VMain(), html.Div(style="height: calc(100vh - 48px); position: relative;"):
            layout_manager.initialize_layout_grid(layout)
    return layout


def _app_bar() -> None:
    with v.VAppBar(density="compact"):
        v.VToolbarTitle(TITLE, style="user-select: none; flex: 0 1 auto;", classes="mr-4")
        v.VBtn(icon="mdi-chevron-left", id="h3de-previous", click="trigger('h3de_previous')",
               disabled=("detecting || case_index <= 0",), density="comfortable")
        html.Span("{{ case_index >= 0 ? cases[case_index].name : 'No case open' }}",
                  id="h3de-case-name", classes="text-subtitle-1 mx-2")
        html.Span("{{ case_index >= 0 ? '(' + (case_index + 1) + ' of ' + cases.length + ')' : '' }}",
                  classes="text-caption text-grey")
        v.VBtn(icon="mdi-chevron-right", id="h3de-next", click="trigger('h3de_next')",
               disabled=("detecting || case_index >= cases.length - 1",), density="comfortable")
        v.VSpacer()
        v.VSwitch(v_model=("show_3d",), label="3D view", hide_details=True, density="compact",
                  color="primary", classes="mr-4 flex-grow-0", id="h3de-show-3d")


def _cases_panel() -> None:
    with html.Div(classes="pa-3"):
        html.Div("Cases", classes="text-overline")
        with v.VList(density="compact", max_height=160, classes="overflow-y-auto", id="h3de-cases"):
            with v.VListItem(
                v_for="item in cases", key="item.index",
                active=("item.index === case_index",),
                disabled=("detecting || !!item.problem",),
                click="trigger('h3de_open', [item.index])",
                id=("'h3de-case-' + item.index",),
            ):
                v.VListItemTitle("{{ item.name }}")
                v.VListItemSubtitle("{{ item.problem || item.path }}")
                with v.Template(v_slot_append=True):
                    v.VIcon("mdi-content-save-check", v_if="item.saved", size="small", color="green")
        v.VFileInput(
            label="Upload volumes (NRRD, NIfTI, MetaImage, DICOM files)",
            multiple=True, density="compact", hide_details=True, prepend_icon="mdi-upload",
            disabled=("detecting",), id="h3de-upload", classes="mt-2",
            change=UPLOAD_OR_REFUSE,
        )


def _detection_panel() -> None:
    with html.Div(classes="pa-3"):
        html.Div("Detection", classes="text-overline")
        v.VSelect(
            label="Model", items=("models",), item_title="label", item_value="spec", model_value=("model",),
            update_modelValue="trigger('h3de_model', [$event])", disabled=("detecting",),
            density="compact", hide_details=True, id="h3de-model", classes="mb-1",
        )
        html.Div("Last detection with {{ model_label }}", v_if="model_label", classes="text-caption mb-2")
        with html.Div(classes="d-flex"):
            v.VBtn("Detect landmarks", id="h3de-detect", color="primary", prepend_icon="mdi-target",
                   click="trigger('h3de_detect')", disabled=("!volume_open || detecting",),
                   loading=("detecting",))
            v.VBtn("Cancel", v_if="detecting", classes="ml-2", variant="tonal", click="trigger('h3de_cancel')")
        with html.Div(v_show="detecting", classes="mt-2"):
            v.VProgressLinear(model_value=("progress",), height=6, color="primary", id="h3de-progress")
            html.Div("{{ progress_step }} {{ progress }}%", classes="text-caption")
        v.VAlert("{{ error }}", v_if="error", type="error", density="compact", classes="mt-2", id="h3de-error")
        html.Div("{{ message }}", v_if="message && !error", classes="text-caption mt-2", id="h3de-message")


def _landmarks_panel() -> None:
    with html.Div(classes="pa-3 d-flex flex-column", style="flex: 1 1 auto; min-height: 0;"):
        html.Div("Landmarks ({{ landmarks.filter(r => r.placed).length }} placed of {{ landmarks.length }})",
                 classes="text-overline")
        html.Div("Click a landmark to show it; drag points in the slice views to correct them.",
                 v_if="landmarks.length", classes="text-caption text-grey")
        with html.Div(v_if="landmarks.length", classes="d-flex align-center my-1"):
            html.Div("{{ review_counts }}", classes="text-caption flex-grow-1", id="h3de-review-counts")
            v.VBtn("Next flagged", id="h3de-next-flagged", size="x-small", variant="tonal", color="orange",
                   prepend_icon="mdi-flag", disabled=("!landmarks.some(r => r.flagged)",),
                   title="centre the slice views on the next point flagged for review",
                   click="trigger('h3de_next_flagged')")
        with v.VTable(density="compact", classes="h3de-landmarks", fixed_header=True, id="h3de-landmarks",
                      style="flex: 1 1 auto; min-height: 0; overflow-y: auto;"):
            with html.Thead(), html.Tr():
                html.Th("Landmark")
                html.Th("Confidence")
                html.Th("Exp. error")
                html.Th("Status")
                html.Th("")
            with html.Tbody():
                with html.Tr(
                    v_for="row in landmarks", key="row.index",
                    id=("'h3de-landmark-' + row.index",),
                    classes=("row.index === active_landmark ? 'h3de-active' : ''",),
                    click="trigger('h3de_jump', [row.index])",
                ):
                    html.Td("{{ row.name }}")
                    with html.Td():
                        html.Span("{{ row.confidence === null ? '-' : (100 * row.confidence).toFixed(0) + '%' }}")
                        v.VIcon("mdi-alert", v_if="row.low_confidence", size="x-small", color="orange",
                                classes="ml-1", title="below the model's confidence threshold")
                    with html.Td():
                        html.Span("{{ row.expected_error_mm === null ? '-' : row.expected_error_mm.toFixed(2) + ' mm' }}")
                        v.VIcon("mdi-flag", v_if="row.flagged", size="x-small", color="orange", classes="ml-1",
                                id=("'h3de-flag-' + row.index",), title="flagged for review")
                    with html.Td():
                        v.VChip("{{ row.status }}", size="x-small", color=(STATUS_COLORS,),
                                id=("'h3de-status-' + row.index",))
                    with html.Td(classes="text-no-wrap"):
                        v.VBtn("Place", v_if="!row.placed && placing !== row.index", size="x-small",
                               variant="tonal", id=("'h3de-place-' + row.index",),
                               raw_attrs=[_click_only("trigger('h3de_place', [row.index])")])
                        v.VBtn("Cancel", v_if="placing === row.index", size="x-small", variant="tonal",
                               color="orange", raw_attrs=[_click_only("trigger('h3de_stop_placing')")])
                        v.VBtn("Absent", v_if="row.placed", size="x-small", variant="text",
                               title="mark this landmark as not in the volume",
                               id=("'h3de-absent-' + row.index",),
                               raw_attrs=[_click_only("trigger('h3de_mark_absent', [row.index])")])


def _click_only(action: str) -> str:
    """A click handler that does not also select the row around the button."""
    return f'@click.stop="{action}"'


def _export_panel() -> None:
    with html.Div(classes="pa-3"):
        html.Div("Export (LPS)", classes="text-overline")
        with html.Div(classes="d-flex flex-wrap ga-2"):
            v.VBtn("Save beside case", id="h3de-save", prepend_icon="mdi-content-save", size="small",
                   click="trigger('h3de_save')", disabled=("!landmarks.length",))
            v.VBtn(".mrk.json", id="h3de-download-mrk", prepend_icon="mdi-download", size="small",
                   disabled=("!landmarks.length",),
                   click="utils.download(download_names.mrk_json, trigger('h3de_download', ['mrk_json']), "
                         "'application/json')")
            v.VBtn("CSV", id="h3de-download-csv", prepend_icon="mdi-download", size="small",
                   disabled=("!landmarks.length",),
                   click="utils.download(download_names.csv, trigger('h3de_download', ['csv']), 'text/csv')")
        html.Div("{{ saved_files.join(', ') }}", v_if="saved_files.length", classes="text-caption mt-1",
                 id="h3de-saved-files")


def _replace_dialog() -> None:
    with v.VDialog(model_value=("!!replace_prompt",), persistent=True, max_width=520, id="h3de-replace-dialog"):
        with v.VCard(title="Replace the saved review?"):
            v.VCardText("{{ replace_prompt }}")
            with v.VCardActions():
                v.VSpacer()
                v.VBtn("Keep the saved files", id="h3de-keep-saved", click="trigger('h3de_keep_saved')")
                v.VBtn("Replace", id="h3de-replace", color="warning", click="trigger('h3de_save', [true])")
