"""`cifarkit app RUN`, a local web app over a trained run: server.py lays the pages out and serves them (Gradio,
imported only when the app starts), views.py computes what they show as plain functions (predictions, Grad-CAM, the
test set's worst mistakes), uploads.py reads a user's image files within stated bounds."""
