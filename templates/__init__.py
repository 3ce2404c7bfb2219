"""Chat template definitions: plain data files, one per template, registered by tuneforge.plugins.templates.builtin."""
