"""The `.nnc` container: frames, chunk index, file layout and seek table (see SPEC.md)."""
