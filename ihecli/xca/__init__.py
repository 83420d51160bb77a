"""XCA (ITI TF-1 18; ITI TF-2b 3.38, 3.39): Cross Gateway Query and Cross Gateway Retrieve.

- ``responding``: the Responding Gateway (``ihe xca serve``): ITI-38 and ITI-39 answered from
  the local registry and repository (the data behind ``ihe xds serve``), with the community's
  homeCommunityId on every returned object and as the location of every error.
- ``initiating``: the Initiating Gateway's fan-out (``ihe xca query|retrieve``): one request
  per responding gateway, in parallel, answers merged with the community each came from;
  a community that fails or does not answer is an error of that community, not of the whole.
"""
