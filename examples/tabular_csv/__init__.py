"""A tabular task: machine states from sensor readings in CSV files."""
