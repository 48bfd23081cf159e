"""Constants shared by the data and the model half.

``IGNORE_INDEX`` is the label of a token that is not trained (prompt tokens, padding, the first
token of every packed sample): ``-100``, the ``ignore_index`` of ``torch.nn.CrossEntropyLoss`` and
the value MindSpeed-LLM / LLaMA-Factory write into their ``labels`` datasets.
"""

IGNORE_INDEX = -100
