"""Test support: the harnesses the tests (and the benchmarks) drive, kept out of the product.

``tests/`` is on ``sys.path`` when pytest runs (rootdir ``conftest.py``, no ``tests/__init__.py``), and
``bench/common.py`` puts it there too, so every user imports the same way::

    from support.ports import free_port
    from support.orthanc import Orthanc
    from support.studies import derive_cxr_study

Modules: ``ports`` (free TCP ports), ``tools`` (the external programs: dcmtk, dciodvfy...), ``data`` (where the
test data lives), ``dcmtk`` (storescu/echoscu/storescp peers), ``orthanc`` (a real Orthanc), ``pacs`` (the mini
PACS: a pynetdicom Storage SCP), ``nodeproc`` (``dicom-node serve`` as a process), ``nodekit`` (sending to a
node and reading its state), ``studies`` (test studies built from real images), ``stallproxy`` (a PACS that
withholds its replies), ``tlscerts`` (a throw-away PKI), ``validate`` (dciodvfy).
"""
