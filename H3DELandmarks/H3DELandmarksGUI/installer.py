"""Checks the Python packages H3DELandmarksLib needs by version and installs them once the user agrees."""

import importlib

import slicer
from slicer.i18n import tr as _

from H3DELandmarksLib.requirements import TORCH, unmet_requirements

REQUESTER = "H3DE Landmarks"


class PackageInstaller:
    """The widget's installer: `unmet()` lists what is missing or too old, `install()` fixes it.

    PyTorch comes from the PyTorch extension (the right build for the GPU) when it is there; the
    other packages through Slicer's `pip_ensure` (slicer.pydeps, or slicer.packaging in older
    Slicer) or, before those existed, `pip_install` after a confirmation. `install` returns False
    when the user declines (or Slicer runs in testing mode, where nothing is installed); other
    failures raise, for the widget to show.
    """

    def unmet(self):
        return unmet_requirements()

    def install(self):
        unmet = self.unmet()
        torch = [item.requirement for item in unmet if item.requirement.name == TORCH]
        others = [item.requirement for item in unmet if item.requirement.name != TORCH]
        if torch and not self.installTorch(torch[0]):
            return False
        if others and not self.installPackages(others):
            return False
        importlib.invalidate_caches()
        return not self.unmet()

    def installTorch(self, requirement):
        try:
            import PyTorchUtils
        except ImportError:
            return self.installPackages([requirement])
        logic = PyTorchUtils.PyTorchUtilsLogic()
        return logic.installTorch(askConfirmation=True, torchVersionRequirement=str(requirement.specifier)) is not None

    def installPackages(self, requirements):
        ensure = self.slicerPipEnsure()
        if ensure is not None:
            ensure(list(requirements), requester=REQUESTER)
            importlib.invalidate_caches()
            names = {requirement.name for requirement in requirements}
            return not [item for item in self.unmet() if item.requirement.name in names]
        texts = [str(requirement) for requirement in requirements]
        question = _("{requester} needs these Python packages: {packages}. Install them now? "
                     "This can take several minutes.").format(requester=REQUESTER, packages=", ".join(texts))
        if not slicer.util.confirmOkCancelDisplay(question):
            return False
        slicer.util.pip_install(texts)
        return True

    @staticmethod
    def slicerPipEnsure():
        """Slicer's own `pip_ensure` (5.11 and later), or None."""
        for name in ("slicer.pydeps", "slicer.packaging"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "pip_ensure"):
                return module.pip_ensure
        return None
