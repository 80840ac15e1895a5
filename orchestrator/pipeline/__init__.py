"""The job's path, one module per stage: decode → avatar → drive → infer → composite → encode."""
