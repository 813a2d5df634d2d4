"""rightsizer: right-size your language model, on Kubeflow."""
__version__ = "0.1.0"
