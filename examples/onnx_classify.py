import json, numpy as np, onnxruntime as ort; from PIL import Image
runner = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])  # from `cifarkit export`
image = np.asarray(Image.open("cat.png").convert("RGB").resize((32, 32), Image.BILINEAR))  # uint8 [32, 32, 3]
probs = runner.run(["probs"], {"images": image[None]})[0][0]  # softmax; normalisation is inside the model
print(json.loads(runner.get_modelmeta().custom_metadata_map["classes"])[probs.argmax()], f"{probs.max():.3f}")
