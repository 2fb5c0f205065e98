"""A user's architecture module whose import fails (as timm's did beside a torchvision whose C++ ops
do not load), imported by ``--arch broken_import_models:FACTORY`` in the CLI tests."""

raise RuntimeError("operator torchvision::nms does not exist")
