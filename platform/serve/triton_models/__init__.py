"""The model.py files `rayrec export triton` copies into a Triton repository (they run in
Triton's python backend, which imports triton_python_backend_utils; never imported here)."""
