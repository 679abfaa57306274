"""auricle's version, in a module of its own: what the package writes into its files (an exported graph's
producer, a prepared graph's stamp, a teacher's targets) is read from here, below every layer, not from the
package face (``auricle.__version__`` re-exports it)."""

__version__ = "0.1.0"
