"""The tuneforge command line: one module per subcommand."""
