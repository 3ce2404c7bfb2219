"""The web UI's top bar and tabs: each module has ``build(ui)`` (the components, registered in
``ui.page`` by element id) and ``wire(ui)`` (the event handlers)."""
