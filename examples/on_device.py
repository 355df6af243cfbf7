"""Train on a device with numpy + onnxruntime only: load the prefix that fits, train, evaluate.

    python examples/on_device.py fmnist-ipc10.mdc [IPC] [EPOCHS]

The file carries its own trainer (an ONNX train-step graph); no torch is imported.
"""

import sys

import runtime

path = sys.argv[1] if len(sys.argv) > 1 else "fmnist-ipc10.mdc"
budget = int(sys.argv[2]) if len(sys.argv) > 2 else 3  # or runtime.Budget(seconds=60) / Budget(memory_mb=256)
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 300

ds = runtime.load(path, budget=budget)                   # reads only the IPC-k prefix's bytes
model = runtime.train(ds, backend="onnx", epochs=epochs)  # soft-label views replayed in numpy
x, y = runtime.load_test_data("fashion-mnist")            # uint8 IDX test set, normalised by evaluate
print(f"IPC-{ds.ipc} ({len(ds)} images): test accuracy {runtime.evaluate(model, x, y):.4f}")
