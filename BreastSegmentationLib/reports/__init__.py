"""Reports: figures, tables and Markdown/CSV/JSON writers."""
