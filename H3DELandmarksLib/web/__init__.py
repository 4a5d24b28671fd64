"""The browser review app (`h3de serve`), built on trame-slicer: Slicer's scene, views and widgets.

- `cases`: the cases offered (command-line inputs and uploads) and where reviews are saved.
- `detection`: detection in a worker thread beside the server's event loop, model loaded once.
- `review`: one case at a time in the scene, through `H3DELandmarksLib.mrml` for every decision.
- `controller`: what each button does, and the shared state the browser shows.
- `ui`: the page. `app`: the trame server, the Slicer application and its views.

Needs the ``web`` extra (trame-slicer); importing `app` without it fails.
"""
