"""The downloader: infrastructure below the stages, not a stage.

Step 2 of a run (``curate.download.download.run_download``) calls img2dataset with curate's
fetching underneath it: the URL precheck before download (``precheck``, ``address_policy``,
``browser_url``), address checks at connect time and body/time/pixel caps (``safe_fetch``,
``content_encoding``, ``image_decode``), politeness per host (``polite_fetch``, ``host_gate``,
``fetch_deadline``) and the reason codes of failed rows (``download_errors``).
"""
