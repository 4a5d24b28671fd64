"""The 3D Slicer scene bridge: volume nodes, landmark point lists, corrections, exports, background work.

Uses only vtkMRML classes and ``slicer.util`` helpers, so it runs inside Slicer and with the
slicer-core wheel alike. RAS appears only here, at the scene boundary; everything the library
reads or writes stays LPS millimetres.

- `volume_node`: volume node ⇄ `Volume` (IJK-to-RAS and linear parent transforms honoured).
- `markups_node`: `Landmarks` ⇄ point list node, with the prediction remembered.
- `corrections`: per-point review against the prediction; re-detection that keeps corrections.
- `review`: review by confidence (flags, row texts, counts, next flagged point, jumps) for both front-ends.
- `export`: ``.mrk.json`` through Slicer's writer, review CSV.
- `training_export`: "Save for training" into the dataset layout `h3de train` reads.
- `child_process`: background commands (one job interface) stopped with their whole process tree.
- `detect_process`: `h3de detect` in a child process, polled by a GUI timer.
- `training_process`: `h3de train --init-from` on the user's cases in a child process.
- `models`: the models a GUI offers, downloads in a background thread.
- `jobs`: the Slicer module's job starter and the one way it follows any job.
- `panel_state`: what the Slicer module's panel enables and says.
"""
