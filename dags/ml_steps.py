"""Functions called by the ml_train_validate_deploy example DAG."""


def train(learning_rate):
    accuracy = min(0.99, 0.9 + float(learning_rate))
    print(f"trained with learning_rate={learning_rate}, accuracy={accuracy:.3f}")
    return {"model": "model-v1", "accuracy": accuracy}


def validate(min_accuracy, **context):
    accuracy = 0.91
    if accuracy < float(min_accuracy):
        raise ValueError(f"accuracy {accuracy} below {min_accuracy}")
    return accuracy
