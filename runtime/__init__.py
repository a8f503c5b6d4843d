"""Lambda code of ai-gateway: shipped as source, imports only stdlib, boto3/botocore and Powertools."""
