"""Tools around a run: status, export, generate, eval, plot. One module each; `common` resolves paths.

They read run directories, checkpoints and model directories; none imports the training path
(`gptresume.training`), so they work while a run trains and on machines that only hold the files.
"""
